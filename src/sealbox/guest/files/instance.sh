#!/bin/sh
# sealbox guest: apply the per-instance data (schema in sealbox/guest/instance.py, prose in docs/guest-protocol.md)
# from the instance disk, else the kernel command line's ip= argument. Nothing per-instance is ever in the image.
# In a TD nothing is applied unless the data hashes to the MRCONFIGID the TD was started with; sshd requires this
# unit, so it does not start either. Shell builtins where possible: under emulation every exec costs ~10 ms.
# SEALBOX_RESTORE=1 (the restore agent, after a restore from a snapshot): the command line is the snapshot's, so only
# the instance disk counts, read past the page cache (its device now holds another sandbox's data), and the keys,
# addresses and routes it replaces are removed first.
set -eu
run=/run/sealbox
addr= gw= host= dns=
restore=${SEALBOX_RESTORE:-}
say() { echo "sealbox-instance: $*" >&2; }
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
is_td() {  # the kernel lists the tdx_guest CPU flag inside a TD
	while read -r k rest; do
		[ "$k" = flags ] || continue
		case " $rest " in *" tdx_guest "*) return 0 ;; esac
		return 1
	done < /proc/cpuinfo
	return 1
}
td_mrconfigid() {  # this TD's MRCONFIGID as 96 hex digits, or nothing
	mr=/sys/class/misc/tdx_guest/measurements/mrconfigid  # Linux >= 6.16
	if [ -r "$mr" ]; then
		od -An -v -tx1 "$mr" | tr -d ' \n'
		return 0
	fi
	# Linux 6.7-6.15: a quote from configfs-tsm (needs the host's quote generation service); the TDREPORT
	# behind /dev/tdx_guest needs an ioctl, which no tool in the image can make
	tsm=/sys/kernel/config/tsm/report
	[ -d "$tsm" ] || mount -t configfs configfs /sys/kernel/config 2>/dev/null || true
	[ -d "$tsm" ] || return 0
	entry=$tsm/sealbox-instance
	mkdir "$entry" 2>/dev/null || true
	printf '%064d' 0 | tr 0 '\000' > "$entry/inblob" 2>/dev/null || return 0  # REPORTDATA: zeros
	cat "$entry/outblob" > "$run/instance.quote" 2>/dev/null || return 0
	rmdir "$entry" 2>/dev/null || true
	# MRCONFIGID sits 184 bytes into the TD report body: after the 48-byte header (v4), plus 6 (v5)
	case $(od -An -tu2 -N2 "$run/instance.quote" | tr -d ' ') in 4) off=232 ;; 5) off=238 ;; *) return 0 ;; esac
	dd if="$run/instance.quote" bs=1 skip=$off count=48 2>/dev/null | od -An -v -tx1 | tr -d ' \n'
}
apply_passwords() {  # the image's /etc/shadow with the given users' hashes, bound over it (the image stays read-only)
	cp -p /etc/shadow "$run/shadow.new"  # its owner, group and mode (root:shadow 0640), then its new content
	set --
	while IFS=: read -r name pw rest; do
		while IFS=: read -r u h; do
			[ "$u" = "$name" ] && pw=$h && set -- "$@" "$u"
		done < "$pwfile"
		printf '%s:%s:%s\n' "$name" "$pw" "$rest"
	done < /etc/shadow > "$run/shadow.new"
	while IFS=: read -r u _h; do
		case " $* " in *" $u "*) ;; *) say "instance data sets a password for '$u', who is not a user of this image"; rm -f "$run/shadow.new"; exit 1 ;; esac
	done < "$pwfile"
	mv "$run/shadow.new" "$run/shadow"
	mount --bind "$run/shadow" /etc/shadow
}

cmdline=
[ -n "$restore" ] || read -r cmdline < /proc/cmdline
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
disk=
for dev in /sys/block/vd*; do
	[ -e "$dev" ] || continue
	if [ -n "$restore" ]; then  # a restore is QEMU's: the host labels the instance disk, and its cache is stale
		serial=
		read -r serial 2>/dev/null < "$dev/serial" || true  # (stderr first: a disk without a serial is not ours)
		[ "$serial" = sealbox-instance ] || continue
		blockdev --flushbufs "/dev/${dev##*/}"
	fi
	first=
	read -r first < "/dev/${dev##*/}" 2>/dev/null || true
	if [ "$first" = "@SEALBOX_INSTANCE_MAGIC@" ]; then disk=/dev/${dev##*/}; break; fi
done

umask 022
[ -d "$run" ] || mkdir -p "$run"
# nothing is applied before the binding check: the keys wait in $stage (which then becomes authorized_keys), the
# canonical text in $canon (then moved to instance). Few programs: under emulation each costs ~0.1 s
stage=$run/instance.d canon=$run/instance.new pwfile=$run/instance.pw  # hashes wait apart: $stage becomes authorized_keys
if [ -n "$restore" ]; then  # the snapshot's client keys are not this sandbox's
	rm -rf "$stage" "$canon" "$pwfile" "$run/authorized_keys"
elif [ -e "$stage" ] || [ -e "$canon" ] || [ -e "$pwfile" ]; then
	rm -rf "$stage" "$canon" "$pwfile"
fi
if [ -n "$disk" ]; then
	mkdir -p "$stage"
	ended=
	# every line up to END goes into the canonical text exactly as it is applied (secrets as their digest)
	while IFS= read -r line; do
		case $line in
		!*) k=${line#!}; d=$(printf '%s' "${k#*=}" | sha384sum); echo "!${k%%=*}#sha384=${d%% *}" ;;
		*) printf '%s\n' "$line" ;;
		esac
		case $line in
		hostname=*) host=${line#*=} ;;
		address=*) addr=${line#*=} ;;
		gateway=*) gw=${line#*=} ;;
		dns=*) dns="$dns ${line#*=}" ;;
		authorized_key=*)
			v=${line#*=}; u=${v%% *}
			case $u in ''|*[!a-z0-9_-]*|[!a-z_]*) say "instance data names an invalid user '$u'"; exit 1 ;; esac
			printf '%s\n' "${v#* }" >> "$stage/$u"
			;;
		'!password_hash='*)
			v=${line#*=}; u=${v%% *}; h=${v#* }
			case $u in ''|root|*[!a-z0-9_-]*|[!a-z_]*) say "instance data sets a password for an invalid user '$u'"; exit 1 ;; esac
			case $h in '$'*) ;; *) say "instance data's password for '$u' is not a crypt(3) hash"; exit 1 ;; esac
			case $h in *[!A-Za-z0-9./\$=,]*) say "instance data's password for '$u' is not a crypt(3) hash"; exit 1 ;; esac
			(umask 077; printf '%s:%s\n' "$u" "$h" >> "$pwfile")
			;;
		@SEALBOX_INSTANCE_END@) ended=1; break ;;
		esac
	done < "$disk" > "$canon"
	[ -n "$ended" ] || { say "instance disk $disk has no @SEALBOX_INSTANCE_END@ line"; exit 1; }
	digest=$(sha384sum "$canon")
	digest=${digest%% *}
fi
[ -n "$disk" ] || [ -z "$restore" ] || { say "restore: no instance disk labelled sealbox-instance"; exit 1; }
if [ -z "$restore" ] && is_td; then  # TD memory is never snapshotted: a restore is not in a TD
	[ -n "$disk" ] || { say "refusing to start: this TD has no instance disk"; exit 1; }
	want=$(td_mrconfigid)
	if [ -z "$want" ]; then
		say "refusing the instance data: this TD's MRCONFIGID cannot be read (no tdx_guest measurements in sysfs, no configfs-tsm quote)"
		exit 1
	fi
	if [ "$want" != "$digest" ]; then
		say "refusing the instance data: its SHA-384 $digest is not this TD's MRCONFIGID $want"
		exit 1
	fi
	echo "td mrconfigid=$digest" > "$run/instance.binding"
elif [ -n "$disk" ]; then
	echo "not-a-td sha384=$digest" > "$run/instance.binding"
fi

# a second run (the unit restarted) keeps what the first applied, as for the keys
if [ -n "$restore" ] && [ -e "$run/shadow" ]; then  # the snapshot's passwords are its source's: never a sibling's
	umount /etc/shadow
	rm -f "$run/shadow"
fi
if [ -s "$pwfile" ] && [ ! -e "$run/shadow" ]; then apply_passwords; fi
rm -f "$pwfile"
[ -n "$host" ] && echo "$host" > /proc/sys/kernel/hostname
if [ -n "$disk" ]; then
	mv "$canon" "$run/instance"
	if [ -e "$run/authorized_keys" ]; then rm -rf "$stage"; else mv "$stage" "$run/authorized_keys"; fi
fi
{
	echo "# sealbox: resolvers from the instance data"
	for ip in $dns; do echo "nameserver $ip"; done
} > "$run/resolv.conf"
{
	echo "link set lo up"
	if [ -n "$addr" ] && [ -e /sys/class/net/eth0 ]; then
		echo "link set eth0 up"
		[ -z "$restore" ] || { echo "route flush dev eth0"; echo "addr flush dev eth0"; }
		echo "addr replace $addr dev eth0"
		[ -n "$gw" ] && echo "route replace default via $gw dev eth0"
	fi
} | ip -batch -
exit 0
