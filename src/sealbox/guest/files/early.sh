#!/bin/sh
# sealbox guest: make / read-only; give /var, /root and /home an ephemeral copy in RAM and /tmp a fresh
# tmpfs, before anything writes there. The image stays byte-identical; per-boot state lives in RAM.
# Few programs on purpose: under emulation every exec costs tens of milliseconds.
set -eu
# What udev would do at boot, minus udev: load the drivers of the devices present, by their modalias.
# Buses appear as their drivers load (virtio-mmio, then the virtio devices on it), hence the passes.
seen=
for pass in 1 2 3 4; do
	new=
	for f in /sys/bus/*/devices/*/modalias; do
		read -r alias < "$f" 2>/dev/null || continue
		case " $seen " in *" $alias "*) continue ;; esac
		seen="$seen $alias" new="$new $alias"
	done
	[ -n "$new" ] || break
	modprobe -a -q -b $new 2>/dev/null || true
done
rw=/run/sealbox/rw
mkdir -p "$rw"
mount -t tmpfs -o mode=0755,nosuid,nodev sealbox-rw "$rw"
cp -a /var /root /home "$rw/"
cat > /run/sealbox/fstab <<END
$rw/var /var none bind 0 0
$rw/root /root none bind 0 0
$rw/home /home none bind 0 0
tmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0
END
mount --all --fstab /run/sealbox/fstab
# an initramfs root is a writable tmpfs: make it read-only (a disk root is mounted read-only already)
mount -o remount,ro / 2>/dev/null || true
while read -r _dev mnt _type opts _rest; do
	if [ "$mnt" = / ]; then
		case ",$opts," in *,ro,*) exit 0 ;; esac
	fi
done < /proc/mounts
echo "sealbox: / is not read-only" > /dev/console
exit 1
