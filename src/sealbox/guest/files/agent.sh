#!/bin/sh
# sealbox guest: the restore agent (docs/guest-protocol.md). After a restore from a snapshot the host connects to its
# virtio-serial port and sends a nonce, the time and fresh entropy; the agent credits the entropy and reseeds the
# kernel's CRNG, re-applies the (new) instance data, replaces the SSH host key, ends the snapshot's SSH sessions, has
# sshd re-execute with the new key, and answers with it and a signature over the nonce made with it. It opens the port before its unit counts as
# started (Type=forking; the ready marker waits for it), so nothing the image's spec enables can take the port first.
# The hello line blocks in write() until a host is connected: no polling, no cost while nothing happens.
set -u
port=
for p in /sys/class/virtio-ports/*; do
	name=
	read -r name < "$p/name" 2>/dev/null || continue
	[ "$name" = "@SEALBOX_AGENT_PORT@" ] && port=/dev/${p##*/} && break
done
[ -n "$port" ] || exit 0  # no agent port on this machine (Firecracker, q35): nothing to do
exec 3<>"$port"
nonce= now=

fail() { printf '@SEALBOX_RESTORE_FAILED@ %s %s\n' "$nonce" "$1" >&3; }

renew_sshd() {  # end the snapshot's SSH sessions (all of sshd's cgroup but its listener), then the listener re-executes
	cg=/sys/fs/cgroup/system.slice/ssh.service listener= round=0
	[ -r "$cg/cgroup.procs" ] || cg=/sys/fs/cgroup/unified/system.slice/ssh.service
	while [ $round -lt 5 ]; do  # again while anything forked meanwhile
		others=0 round=$((round+1))
		while read -r pid; do
			read -r _ comm _ ppid _ < "/proc/$pid/stat" 2>/dev/null || continue
			if [ "$ppid" = 1 ] && [ "$comm" = "(sshd)" ]; then listener=$pid; else kill -KILL "$pid" 2>/dev/null; others=1; fi
		done < "$cg/cgroup.procs"
		[ $others = 0 ] && break
	done
	[ -n "$listener" ] || return 1
	kill -HUP "$listener"  # sshd re-executes itself: new host key, new address; refused meanwhile, never the old key
}

sign() {  # the answer's first lines, signed with the new host key (SSHSIG): the host checks both against the nonce
	read -r type key _comment < /run/sealbox/ssh/ssh_host_ed25519_key.pub
	printf '@SEALBOX_RESTORED@ %s\n@SEALBOX_HOSTKEY@ %s %s\n' "$nonce" "$type" "$key" > /run/sealbox/restore.msg
	ssh-keygen -Y sign -q -f /run/sealbox/ssh/ssh_host_ed25519_key -n @SEALBOX_RESTORE_SIG_NAMESPACE@ \
		< /run/sealbox/restore.msg > /run/sealbox/restore.sig
}

renew_keys() {  # a new host key, sshd serving it (before the address changes), the signature
	rm -f /run/sealbox/ssh/ssh_host_*
	(. /usr/lib/sealbox/sshd-keys)
	[ $? -eq 0 ] && [ -s /run/sealbox/ssh/ssh_host_ed25519_key.pub ] || return 1
	renew_sshd || return 1
	sign
}

restore() {
	case $now in ''|*[!0-9.]*) fail request; return ;; esac
	# first: the entropy after the request goes from the port straight into the kernel, then the CRNG is reseeded;
	# everything after this draws on it, not on the state the snapshot's siblings share
	/usr/lib/sealbox/reseed <&3 || { fail reseed; return; }
	date -u -s "@$now" > /dev/null & clock=$!
	renew_keys & keys=$!  # on the other vCPU meanwhile
	# the guest scripts run in subshells, not new shells: under emulation every exec costs ~0.1 s. Not in an
	# and-or list, where `set -e` would be ignored inside them
	(SEALBOX_RESTORE=1; . /usr/lib/sealbox/instance) 2> /dev/console  # why it refused: in `sealbox logs`
	applied=$?
	wait $keys
	keyed=$?
	wait $clock || { fail clock; return; }
	[ $applied -eq 0 ] || { fail instance; return; }
	[ $keyed -eq 0 ] || { fail hostkey; return; }
	{
		while IFS= read -r line; do printf '%s\n' "$line"; done < /run/sealbox/restore.msg
		while IFS= read -r line; do printf '%s\n' "$line"; done < /run/sealbox/restore.sig
		printf '@SEALBOX_RESTORE_END@ %s\n' "$nonce"
	} >&3
}

serve() {
	while :; do
		printf '@SEALBOX_AGENT_HELLO@\n' >&3 || exit 1  # blocks until the host is connected
		IFS= read -r line <&3 || continue  # end of file: the host went away; wait for the next one
		case $line in "@SEALBOX_RESTORE_REQUEST@ "*) ;; *) continue ;; esac
		nonce=${line#* } now= n=0 ended=
		case $nonce in *[!0-9a-f]*) continue ;; esac
		[ ${#nonce} -eq 64 ] || continue
		while [ $n -lt 8 ] && IFS= read -r line <&3; do  # dash reads a byte at a time: the entropy stays unread
			n=$((n+1))
			case $line in
			time=*) now=${line#*=} ;;
			@SEALBOX_INSTANCE_END@) ended=1; break ;;
			esac
		done
		[ -n "$ended" ] && restore
	done
}
serve < /dev/null > /dev/null 2>&1 &
exit 0
