#!/bin/sh
# sealbox guest: provision this VM from its cloud's metadata (profiles azure, gcp) when no sealbox instance disk
# configured it: the host name and who may log in with which SSH key; on Azure also the "provisioning complete"
# report to the wire server (without it Azure restarts the VM). The cloud is recognised by its DMI data, as
# cloud-init does; the image lists which clouds it trusts (cloud.conf). Nothing per-instance is in the image.
# Every answer is input: at most 64 KiB within 10 s per request, every value checked against what it must be (a host
# name label, a user name, one OpenSSH public key line, an id of a fixed alphabet); anything else is skipped with a
# line on the console. Keys of a user the image does not have go to root (the image's users are fixed at build).
# Writes only /proc/sys/kernel/hostname and /run/sealbox/authorized_keys/<user> (sshd's AuthorizedKeysFile).
set -u
run=/run/sealbox
say() { echo "sealbox-cloud: $*" >&2; }
tmp=$run/cloud.d
rm -rf "$tmp"
mkdir -p "$tmp/keys"

fetch() {  # URL OUT [wget options...] -> 0 if OUT holds the whole body; the response headers go to OUT.hdr
	url=$1 out=$2
	shift 2
	# the time limit is timeout's: Debian's busybox 1.35 wget crashes with its own -T
	( ulimit -f 128; exec timeout 10 busybox wget -q -S -Y off -O "$out" "$@" "$url" ) 2> "$out.hdr"
}
dmi() { head -c 128 "/sys/class/dmi/id/$1" 2>/dev/null | tr -cd 'A-Za-z0-9 ._-'; }
valid_host() { case $1 in ''|-*|*-|*[!A-Za-z0-9-]*) return 1 ;; esac; [ ${#1} -le 63 ]; }
valid_user() { case $1 in ''|[!a-z_]*|*[!a-z0-9_-]*) return 1 ;; esac; [ ${#1} -le 32 ]; }
nl='
'
valid_key() {  # exactly one OpenSSH public key line: type, base64, an optional printable comment; no options
	[ ${#1} -le 8192 ] || return 1
	case $1 in *"$nl"*) return 1 ;; esac
	printf '%s\n' "$1" | grep -Eqx '(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,2}( [ -~]*)?'
}
add_key() {  # USER KEY-LINE
	k=$(printf '%s' "$2" | tr -d '\r')
	if ! valid_user "$1" || ! valid_key "$k"; then
		say "skipping an SSH key entry that is not 'user' + one OpenSSH public key line"
		return 0
	fi
	u=$1
	grep -q "^$u:" /etc/passwd || u=root  # a user the image does not have (its accounts are fixed at build time)
	printf '%s\n' "$k" >> "$tmp/keys/$u"
}
set_host() {
	if valid_host "$1"; then
		echo "$1" > /proc/sys/kernel/hostname
	else
		say "ignoring the host name the metadata gives: not a DNS label"
	fi
}
retry() {  # N CMD...: the metadata service may need a moment after the lease
	n=$1
	shift
	while ! "$@"; do
		n=$((n-1))
		[ $n -gt 0 ] || return 1
		sleep 1
	done
}

# --- Azure: IMDS (169.254.169.254) for name and keys, the wire server (168.63.129.16) for the ready report ----------
imds() {  # PATH -> the leaf's text in $tmp/v
	fetch "http://169.254.169.254/metadata/instance/$1?api-version=2021-02-01&format=text" "$tmp/v" --header "Metadata: true"
}
azure_tag() {  # TAG -> the text of the first <TAG> element of the goal state, if it is of the id alphabet
	v=$(tr -d '\r\n' < "$tmp/goal" | sed 's/</\n</g' | sed -n "s/^<$1>//p" | head -n 1)
	case $v in ''|*[!A-Za-z0-9._-]*) return 1 ;; esac
	[ ${#v} -le 128 ] && printf '%s\n' "$v"
}
azure() {
	retry 30 imds compute/name || { say "azure: the instance metadata service does not answer"; return 1; }
	name=$(head -c 256 "$tmp/v")
	if imds compute/osProfile/computerName; then name=$(head -c 256 "$tmp/v"); fi
	set_host "$name"
	user=
	if imds compute/osProfile/adminUsername; then user=$(head -c 64 "$tmp/v"); fi
	i=0
	while [ $i -lt 16 ] && imds "compute/publicKeys/$i/keyData"; do
		add_key "${user:-root}" "$(head -c 8192 "$tmp/v")"
		i=$((i+1))
	done
	wire=http://168.63.129.16
	hdr="x-ms-version: 2012-11-30"
	retry 10 fetch "$wire/machine/?comp=goalstate" "$tmp/goal" --header "$hdr" --header "x-ms-agent-name: sealbox" ||
		{ say "azure: the wire server does not give a goal state"; return 1; }
	inc=$(azure_tag Incarnation) && cid=$(azure_tag ContainerId) && iid=$(azure_tag InstanceId) ||
		{ say "azure: the goal state lacks a valid Incarnation, ContainerId or InstanceId"; return 1; }
	case $inc in *[!0-9]*) say "azure: the goal state's incarnation is not a number"; return 1 ;; esac
	doc="<?xml version=\"1.0\" encoding=\"utf-8\"?><Health><GoalStateIncarnation>$inc</GoalStateIncarnation><Container>"
	doc="$doc<ContainerId>$cid</ContainerId><RoleInstanceList><Role><InstanceId>$iid</InstanceId><Health><State>Ready</State>"
	doc="$doc</Health></Role></RoleInstanceList></Container></Health>"
	retry 5 fetch "$wire/machine?comp=health" "$tmp/health" --header "$hdr" --header "x-ms-agent-name: sealbox" \
		--header "Content-Type: text/xml;charset=utf-8" --post-data "$doc" ||
		{ say "azure: the wire server refused the ready report"; return 1; }
	say "azure: reported ready (incarnation $inc)"
}

# --- GCP: the metadata server (169.254.169.254) for name and keys --------------------------------------------------
gmd() {  # PATH -> the value in $tmp/v; only an answer that says it is Google's metadata server counts
	fetch "http://169.254.169.254/computeMetadata/v1/$1" "$tmp/v" --header "Metadata-Flavor: Google" &&
		tr -d '\r' < "$tmp/v.hdr" | grep -Eiq '^ *metadata-flavor: *google *$'
}
gcp_keys() {  # keys in the metadata's format: USER:KEY-LINE per line; gcloud's keys carry an expiry
	now=$(date +%s)
	while IFS= read -r line || [ -n "$line" ]; do
		line=$(printf '%s' "$line" | tr -d '\r')
		[ -n "$line" ] || continue
		key=${line#*:}
		case $key in *'"expireOn":"'*)
			ts=${key#*\"expireOn\":\"}
			ts=${ts%%\"*}
			case $ts in *[!0-9TZ:.+-]*|'') ts=invalid ;; esac
			exp=$(date -d "$ts" +%s 2>/dev/null) || exp=0  # an expiry that does not parse: expired
			[ "$exp" -gt "$now" ] || { say "gcp: skipping an expired key of '${line%%:*}'"; continue; } ;;
		esac
		add_key "${line%%:*}" "$key"
	done < "$1"
}
gcp() {
	retry 30 gmd instance/hostname || { say "gcp: the metadata server does not answer"; return 1; }
	fqdn=$(head -c 256 "$tmp/v")
	set_host "${fqdn%%.*}"
	if gmd instance/attributes/ssh-keys; then cp "$tmp/v" "$tmp/instance-keys"; gcp_keys "$tmp/instance-keys"; fi
	block=
	if gmd instance/attributes/block-project-ssh-keys; then block=$(head -c 16 "$tmp/v" | tr 'A-Z' 'a-z'); fi
	if [ "$block" != true ] && gmd project/attributes/ssh-keys; then cp "$tmp/v" "$tmp/project-keys"; gcp_keys "$tmp/project-keys"; fi
	say "gcp: provisioned from the metadata server"
}

providers=$(sed -n 's/^providers=//p' /usr/lib/sealbox/cloud.conf)
platform=
case " $providers " in *" azure "*) [ "$(dmi chassis_asset_tag)" = 7783-7084-3265-9085-8269-3286-77 ] && platform=azure ;; esac
case " $providers " in *" gcp "*) [ "$(dmi product_name)" = "Google Compute Engine" ] && platform=gcp ;; esac
if [ -z "$platform" ]; then
	say "not on a cloud this image provisions itself on ($providers): no metadata read"
	exit 0
fi
$platform
rc=$?
if [ -n "$(ls "$tmp/keys")" ]; then
	mkdir -p "$run/authorized_keys"
	for f in "$tmp/keys"/*; do
		chmod 0644 "$f"
		mv "$f" "$run/authorized_keys/${f##*/}"
	done
fi
rm -rf "$tmp"
exit $rc
