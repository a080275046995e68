#!/bin/sh
# sealbox guest: power off cleanly when the ACPI power button is pressed (`sealbox stop` uses it when SSH
# does not answer). logind would do this but needs D-Bus, which the image does not have; this reads the
# button's input events itself. Waits in a blocking read: no cost while nothing happens.
modprobe -q -a button evdev 2>/dev/null || true
dev= i=0
while [ -z "$dev" ] && [ $i -lt 50 ]; do
	for d in /sys/class/input/event*; do
		name=
		read -r name < "$d/device/name" 2>/dev/null || continue
		[ "$name" = "Power Button" ] && dev=/dev/input/${d##*/} && break
	done
	[ -n "$dev" ] || { sleep 0.2; i=$((i+1)); }
done
[ -n "$dev" ] || exit 0  # this machine has no power button: nothing to wait for
exec 3< "$dev"
# one struct input_event (x86_64: 16 bytes of time, type u16, code u16, value s32, little-endian) per read;
# EV_KEY (1) KEY_POWER (116) pressed (1) ends in 01 00 74 00 01 00 00 00
while ev=$(head -c 24 <&3 | od -An -v -tx1 -w24) && [ -n "$ev" ]; do
	case $ev in *" 01 00 74 00 01 00 00 00") exec systemctl poweroff ;; esac
done
exit 1
