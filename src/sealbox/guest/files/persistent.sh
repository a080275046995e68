#!/bin/sh
# sealbox guest: mount the persistent data disk at /persistent (module persistent; docs/deploy.md). The disk is the
# one its identity names (diskid: a serial, an Azure LUN), never a device by position. A blank disk (no signature
# blkid knows, first and last MiB zero) gets an ext4 filesystem; an ext4 one is checked (e2fsck -p) and mounted
# nosuid,nodev; anything else (another filesystem, a partition table, data of unknown meaning) is left exactly as
# it is and nothing is mounted. No other disk is read or written; the image stays read-only.
set -u
. /usr/lib/sealbox/diskid
mnt=/persistent
say() { echo "sealbox-persistent: $*" >&2; }
ids=
while read -r line; do
	case $line in disk=*) ids="$ids ${line#disk=}" ;; esac
done < /usr/lib/sealbox/persistent.conf
i=0 rc=1 dev=
while [ $i -lt 50 ]; do  # disks appear as their drivers probe (SCSI and NVMe scan asynchronously): at most 5 s
	# shellcheck disable=SC2086 # identities never hold spaces (checked when the image is built)
	if dev=$(diskid_find $ids); then rc=0; break; else rc=$?; fi
	[ $rc -eq 2 ] && break
	sleep 0.1; i=$((i+1))
done
case $rc in
1) say "no disk named by$ids is attached: $mnt stays unmounted"; exit 0 ;;
2) say "two disks ($dev) are named by$ids: touching neither; $mnt stays unmounted"; exit 1 ;;
esac
name=${dev#/dev/}
read -r sectors < "/sys/block/$name/size"
zero_mib() {  # $1: byte offset: the MiB there reads as zeros
	dd if="$dev" bs=1M count=1 skip="$1" iflag=skip_bytes 2>/dev/null | cmp -s -n 1048576 - /dev/zero
}
blkid -p -o export "$dev" > /dev/null 2>&1
case $? in
0) blank= ;;  # some signature: not blank
2) blank=1 ;;  # nothing blkid knows
*) say "blkid cannot probe $dev: leaving it alone"; exit 1 ;;
esac
if [ -n "$blank" ] && [ "$sectors" -ge 2048 ] && zero_mib 0 && zero_mib $(((sectors - 2048) * 512)); then
	say "$dev is blank: making an ext4 filesystem"
	mke2fs -q -F -t ext4 -L persistent -m 0 "$dev" || { say "mke2fs on $dev failed"; exit 1; }
else
	# blkid's own names for what it found (never a label or other value the disk's owner chose)
	type=$(blkid -p -o value -s TYPE "$dev" 2>/dev/null | head -c 32 | tr -cd 'A-Za-z0-9_-')
	pt=$(blkid -p -o value -s PTTYPE "$dev" 2>/dev/null | head -c 32 | tr -cd 'A-Za-z0-9_-')
	[ -z "$pt" ] || type="a $pt partition table"
	if [ "$type" != ext4 ]; then
		say "$dev holds ${type:-data this guest does not recognise}, not an ext4 filesystem: not formatted, not mounted"
		exit 1
	fi
	e2fsck -p "$dev" >&2
	fsck=$?
	if [ $fsck -ge 4 ]; then
		say "e2fsck found errors on $dev it cannot repair (exit $fsck): not mounted; repair it with e2fsck on the host"
		exit 1
	fi
fi
mount -t ext4 -o nosuid,nodev "$dev" "$mnt" || { say "mounting $dev at $mnt failed"; exit 1; }
say "$dev mounted at $mnt"
exit 0
