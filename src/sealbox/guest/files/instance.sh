#!/bin/sh
# sealbox guest: apply per-instance data (docs/guest-protocol.md) from the instance disk and the kernel
# command line's ip= argument. Nothing per-instance is ever in the image. Shell builtins where possible:
# under emulation every exec costs tens of milliseconds.
set -eu
addr= gw= host= users= keys=
mask2prefix() {  # dotted netmask -> prefix length
	n=0 old=$IFS
	IFS=.
	for o in $1; do
		case $o in 255) n=$((n+8));; 254) n=$((n+7));; 252) n=$((n+6));; 248) n=$((n+5));; 240) n=$((n+4));;
			224) n=$((n+3));; 192) n=$((n+2));; 128) n=$((n+1));; esac
	done
	IFS=$old
	echo "$n"
}
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
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
	set -- /sys/block/vd*
	[ -e /sys/class/net/eth0 ] && [ -e "$1" ] && break
	sleep 0.1; i=$((i+1))
done
for dev in /sys/block/vd*; do
	[ -e "$dev" ] || continue
	first=
	read -r first < "/dev/${dev##*/}" 2>/dev/null || true
	[ "$first" = "@SEALBOX_INSTANCE_MAGIC@" ] || continue
	while IFS='=' read -r k v; do
		case $k in
		hostname) host=$v ;; address) addr=$v ;; gateway) gw=$v ;; ssh_user) users="$users $v" ;;
		authorized_key) keys="$keys$v
" ;;
		@SEALBOX_INSTANCE_END@) break ;;
		esac
	done < "/dev/${dev##*/}"
	break
done
[ -n "$host" ] && echo "$host" > /proc/sys/kernel/hostname
if [ -n "$keys" ]; then  # the sandbox's key, for each user the host named (sshd reads .../%u)
	mkdir -p /run/sealbox/authorized_keys
	umask 022
	for user in ${users:-root}; do
		case $user in *[!a-z0-9_-]*|[!a-z_]*) continue ;; esac
		printf '%s' "$keys" > "/run/sealbox/authorized_keys/$user"
	done
fi
{
	echo "link set lo up"
	if [ -n "$addr" ] && [ -e /sys/class/net/eth0 ]; then
		echo "link set eth0 up"
		echo "addr replace $addr dev eth0"
		[ -n "$gw" ] && echo "route replace default via $gw dev eth0"
	fi
} | ip -batch -
exit 0
