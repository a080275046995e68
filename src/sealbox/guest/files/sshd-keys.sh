#!/bin/sh
# sealbox guest: a fresh SSH host key every boot, in RAM; the host pins it from the console.
set -eu
umask 077
[ -d /run/sealbox/ssh ] || mkdir -p /run/sealbox/ssh
[ -e /run/sealbox/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -C '' -f /run/sealbox/ssh/ssh_host_ed25519_key
