#!/bin/sh
# sealbox guest: announce the pinned host keys, then readiness, on the console (before any user code).
for k in /run/sealbox/ssh/*.pub; do
	[ -e "$k" ] || continue
	read -r type key _comment < "$k"
	printf '@SEALBOX_HOSTKEY@ %s %s\n' "$type" "$key" > /dev/console
done
read -r boot_id < /proc/sys/kernel/random/boot_id
printf '@SEALBOX_READY@ %s\n' "$boot_id" > /dev/console
exit 0
