#!/bin/sh
# sealbox guest: busybox udhcpc's event script (profiles azure, gcp: a guest without a sealbox instance disk). Every
# value comes from whoever answers DHCP on the link: each is checked to be what it claims (an IPv4 address, a prefix
# length, an MTU, a domain name) before `ip` or resolv.conf sees it; a lease without a valid address is not applied.
# Classless static routes (option 121: GCP gives a /32 and an on-link route to its gateway) replace the router
# option, as RFC 3442 says.
set -u
run=/run/sealbox
say() { echo "sealbox-dhcp: $*" >&2; }
ipv4() {  # $1 is a dotted quad of decimal octets 0-255 without leading zeros
	case $1 in ''|*[!0-9.]*|.*|*.|*..*) return 1 ;; esac
	old=$IFS; IFS=.
	# shellcheck disable=SC2086 # splitting at the dots is the point
	set -- $1
	IFS=$old
	[ $# -eq 4 ] || return 1
	for o in "$@"; do
		case $o in [0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5]) ;; *) return 1 ;; esac
	done
}
prefix() { case $1 in [0-9]|[12][0-9]|3[0-2]) return 0 ;; *) return 1 ;; esac; }
iface=${interface:-}
case $iface in eth[0-9]|eth[0-9][0-9]) ;; *) say "refusing interface '$iface'"; exit 1 ;; esac

routes() {  # classless routes "NET/LEN GW ..." (on-link ones first), else the first valid router
	if [ -n "${staticroutes:-}" ]; then
		# shellcheck disable=SC2086 # pairs of words
		set -- $staticroutes
		for pass in link via; do
			while [ $# -ge 2 ]; do
				net=${1%/*} len=${1#*/} gw=$2
				shift 2
				if ! ipv4 "$net" || ! prefix "$len" || ! ipv4 "$gw"; then
					say "skipping a bad classless route '$net/$len via $gw'"
					continue
				fi
				if [ "$gw" = 0.0.0.0 ] && [ $pass = link ]; then
					ip route replace "$net/$len" dev "$iface" scope link
				elif [ "$gw" != 0.0.0.0 ] && [ $pass = via ]; then
					ip route replace "$net/$len" via "$gw" dev "$iface" onlink
				fi
			done
			# shellcheck disable=SC2086
			set -- $staticroutes
		done
		return 0
	fi
	for r in ${router:-}; do
		if ipv4 "$r"; then
			ip route replace default via "$r" dev "$iface" onlink
			return 0
		fi
		say "skipping a bad router '$r'"
	done
}

resolvers() {
	tmp=$run/resolv.conf.dhcp
	{
		echo "# sealbox: resolvers from DHCP"
		n=0
		for d in ${dns:-}; do
			if ipv4 "$d" && [ $n -lt 3 ]; then echo "nameserver $d"; n=$((n+1)); fi
		done
		words=
		for w in ${search:-${domain:-}}; do
			case $w in *[!A-Za-z0-9.-]*|.*|-*) continue ;; esac
			[ ${#w} -le 253 ] && words="$words $w"
		done
		[ -z "$words" ] || echo "search$words"
	} > "$tmp"
	mv "$tmp" "$run/resolv.conf"
}

case ${1:-} in
deconfig)
	ip addr flush dev "$iface"
	ip link set "$iface" up
	;;
bound|renew)
	if ! ipv4 "${ip:-}" || ! prefix "${mask:-}"; then
		say "ignoring a lease without a valid address and prefix ('${ip:-}/${mask:-}')"
		exit 1
	fi
	[ "$1" = renew ] || ip addr flush dev "$iface"
	ip addr replace "$ip/$mask" dev "$iface"
	case ${mtu:-} in 5[7-9][0-9]|[6-9][0-9][0-9]|[1-8][0-9][0-9][0-9]|9[01][0-9][0-9]) ip link set dev "$iface" mtu "$mtu" ;; esac
	routes
	resolvers
	say "$iface: $ip/$mask (lease ${lease:-?} s)"
	;;
leasefail|nak)
	say "$iface: no lease (${1})"
	;;
esac
exit 0
