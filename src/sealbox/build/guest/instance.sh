#!/bin/sh
# sealbox guest: apply per-instance data (docs/guest-protocol.md) from the instance disk and the kernel
# command line's ip= argument. Nothing per-instance is ever in the image.
set -eu
addr= gw= host= user=root keys=
mask2prefix() {  # dotted netmask -> prefix length
	n=0
	for o in $(echo "$1" | tr . ' '); do
		case $o in 255) n=$((n+8));; 254) n=$((n+7));; 252) n=$((n+6));; 248) n=$((n+5));; 240) n=$((n+4));;
			224) n=$((n+3));; 192) n=$((n+2));; 128) n=$((n+1));; esac
	done
	echo "$n"
}
for arg in $(cat /proc/cmdline); do
	case $arg in
	ip=*)
		old=$IFS; IFS=:
		set -- ${arg#ip=}
		IFS=$old
		[ -n "${1:-}" ] && addr="$1/$(mask2prefix "${4:-255.255.255.255}")"
		gw=${3:-} host=${5:-}
		;;
	esac
done
i=0
while [ $i -lt 50 ]; do  # virtio devices appear as their modules load: wait at most 5 s
	[ -e /sys/class/net/eth0 ] && ls /sys/block/ | grep -q '^vd' && break
	sleep 0.1; i=$((i+1))
done
for dev in /sys/block/vd*; do
	[ -e "$dev" ] || continue
	d=/dev/${dev##*/}
	[ "$(head -c 19 "$d" 2>/dev/null)" = "SEALBOX-INSTANCE-V1" ] || continue
	while IFS='=' read -r k v; do
		case $k in
		hostname) host=$v ;; address) addr=$v ;; gateway) gw=$v ;; ssh_user) user=$v ;;
		authorized_key) keys="$keys$v
" ;;
		END) break ;;
		esac
	done < "$d"
	break
done
[ -n "$host" ] && hostname "$host"
install -d -m 0755 /run/sealbox/authorized_keys
if [ -n "$keys" ]; then
	printf '%s' "$keys" > "/run/sealbox/authorized_keys/$user"
	chmod 0644 "/run/sealbox/authorized_keys/$user"
fi
ip link set lo up
if [ -n "$addr" ] && [ -e /sys/class/net/eth0 ]; then
	ip link set eth0 up
	ip addr replace "$addr" dev eth0
	[ -n "$gw" ] && ip route replace default via "$gw" dev eth0
fi
exit 0
