#!/bin/sh
# sealbox gui: this boot's keys for xrdp, made in RAM (the image holds none): the TLS key with its self-signed
# certificate, whose SHA-256 fingerprint `sealbox rdp` shows (it reads the certificate over the pinned SSH
# connection), and the RSA key pair xrdp insists on loading at start (rsakeys.ini; unused: the image's xrdp.ini allows
# TLS only). xrdp runs as the user xrdp and reads them through its group; nobody else can.
set -eu
dir=/run/sealbox/xrdp
umask 077
mkdir -p "$dir"
[ -s "$dir/cert.pem" ] && [ -s "$dir/rsakeys.ini" ] && exit 0
read -r host < /proc/sys/kernel/hostname
# both key generations at once: each is a second or more of CPU under emulation
xrdp-keygen xrdp "$dir/rsakeys.ini.new" > /dev/null &
openssl req -x509 -newkey rsa:2048 -noenc -sha256 -days 3650 -subj "/CN=$host" \
	-keyout "$dir/key.pem.new" -out "$dir/cert.pem.new" 2>/dev/null
wait $! || { echo "sealbox-xrdp-keys: xrdp-keygen failed" >&2; exit 1; }
chgrp xrdp "$dir" "$dir/key.pem.new" "$dir/rsakeys.ini.new"
chmod 0750 "$dir"
chmod 0640 "$dir/key.pem.new" "$dir/rsakeys.ini.new"
chmod 0644 "$dir/cert.pem.new"
for f in rsakeys.ini key.pem cert.pem; do mv "$dir/$f.new" "$dir/$f"; done
