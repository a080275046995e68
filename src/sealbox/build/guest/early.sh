#!/bin/sh
# sealbox guest: make / read-only; give /var, /root and /home an ephemeral copy in RAM, /tmp a fresh tmpfs.
# Runs before anything writes there. The image stays byte-identical; per-boot state lives in RAM.
set -eu
seed() {  # seed DIR: a tmpfs over DIR holding a copy of what the image has there
	dir=$1
	[ -d "$dir" ] || return 0
	copy=/run/sealbox/seed
	rm -rf "$copy"
	mkdir -p "$copy"
	cp -a "$dir/." "$copy/"
	mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$dir"
	cp -a "$copy/." "$dir/"
	rm -rf "$copy"
}
mkdir -p /run/sealbox
seed /var
seed /root
seed /home
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
# an initramfs root is a writable tmpfs: make it read-only (a disk root is mounted read-only already)
mount -o remount,ro / 2>/dev/null || true
grep -q ' / [^ ]* ro[ ,]' /proc/mounts || { echo "sealbox: / is not read-only" > /dev/console; exit 1; }
exit 0
