# sealbox guest: find a disk by a stable identity, never by device order. Sourced (persistent uses it; a module that
# formats the disk itself, e.g. with LUKS, can too). An identity is one of
#   serial=NAME    a virtio-blk serial (/sys/block/vdX/serial), a SCSI unit serial (VPD page 0x80: QEMU scsi-hd's
#                  serial=, GCP's device name on SCSI) or an NVMe controller serial (QEMU -device nvme,serial=)
#   azure-lun=N    an Azure data disk: a SCSI disk at LUN N behind Hyper-V's data-disk controller
# Everything read from sysfs is input: at most 64 bytes of it, compared whole after trimming the padding; a value
# with any byte outside the identity alphabet names nothing. Only whole disks count, and nothing but these sysfs
# attributes is read: no disk's content.
DISKID_SYS=${DISKID_SYS:-/sys}
DISKID_AZURE_DATA="{f8b3781b-1e82-4818-a1c3-63d806ec15bb}"  # the vmbus instance id of Azure's data-disk controller

diskid_serial() {  # $1: a disk name (vda, sdb, nvme0n1) -> its serial, or nothing
	case $1 in
	vd*) f=$DISKID_SYS/block/$1/serial skip=1 ;;
	nvme*) f=$DISKID_SYS/block/$1/device/serial skip=1 ;;
	sd*) f=$DISKID_SYS/block/$1/device/vpd_pg80 skip=5 ;;  # a 4-byte page header, then the serial
	*) return 0 ;;
	esac
	[ -r "$f" ] || return 0
	v=$(tail -c +$skip "$f" 2>/dev/null | head -c 64 | tr -d '\000\n')
	while :; do case $v in " "*) v=${v# } ;; *" ") v=${v% } ;; *) break ;; esac; done  # NVMe and SCSI pad with spaces
	case $v in ''|*[!A-Za-z0-9._-]*) return 0 ;; esac
	printf '%s\n' "$v"
}

diskid_azure_lun() {  # $1: sdX -> its LUN if the disk sits behind Azure's data-disk controller, else nothing
	p=$(readlink -f "$DISKID_SYS/block/$1/device" 2>/dev/null) || return 0
	lun=${p##*:}  # the device directory is H:C:T:L
	case $lun in ''|*[!0-9]*) return 0 ;; esac
	i=0
	while [ -n "$p" ] && [ "$p" != / ] && [ $i -lt 32 ]; do  # up to the vmbus device, whose device_id names the controller
		if [ -r "$p/device_id" ] && [ "$(head -c 64 "$p/device_id" 2>/dev/null | tr -d '\n')" = "$DISKID_AZURE_DATA" ]; then
			printf '%s\n' "$lun"
			return 0
		fi
		p=${p%/*} i=$((i+1))
	done
}

diskid_matches() {  # $1: disk name, $2: identity
	case $2 in
	serial=?*) [ "$(diskid_serial "$1")" = "${2#serial=}" ] ;;
	azure-lun=?*) case $1 in sd*) [ "$(diskid_azure_lun "$1")" = "${2#azure-lun=}" ] ;; *) return 1 ;; esac ;;
	*) return 1 ;;
	esac
}

diskid_find() {  # IDENTITY... -> /dev/NAME of the one disk any of them names (0); none (1); two disks (2, names printed)
	found=
	for d in "$DISKID_SYS"/block/*; do
		name=${d##*/}
		case $name in *[!a-z0-9]*) continue ;; nvme*c*) continue ;; vd*|sd*|nvme*n*) ;; *) continue ;; esac
		for id in "$@"; do
			diskid_matches "$name" "$id" || continue
			if [ -n "$found" ] && [ "$found" != "$name" ]; then
				printf '%s %s\n' "$found" "$name"
				return 2
			fi
			found=$name
		done
	done
	[ -n "$found" ] || return 1
	printf '/dev/%s\n' "$found"
}
