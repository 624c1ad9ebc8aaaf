#!/bin/bash
# Failover of an anycast fleet, measured (docs/scale.md): two wg-appliance
# gateways with the same interface key, port and peers hold one anycast
# address; a router namespace spreads the clients' flows over them with an
# ECMP route (L4 hash); N wireguard-go clients ping through the tunnel
# every 100 ms. Then the router's link to one gateway goes down (the box
# died), and for every client that was on it this prints how long its
# pings went unanswered until it re-handshook with the other gateway.
#
# Needs root, wireguard-go, wg, iproute2, and a release build:
#   cargo build --release -p wg-appliance && scripts/fleet-failover.sh [clients]
# Everything it creates carries its pid in the name and goes at exit.
set -eu
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/wg-appliance}
N=${1:-6}
ANY=203.0.113.10
t=$$
d=$(mktemp -d)
R=ffr$t
G=(ffg1$t ffg2$t)
C=()
for i in $(seq 1 "$N"); do C+=("ffc$i$t"); done
cleanup() {
    for g in 0 1; do ip netns exec ${G[$g]} "$BIN" down fw$g$t >/dev/null 2>&1 || true; done
    for i in $(seq 1 "$N"); do ip netns exec ${C[$((i-1))]} ip link del fc$i$t >/dev/null 2>&1 || true; done
    pkill -f "wireguard-go fc[0-9]*$t" 2>/dev/null || true
    for n in $R "${G[@]}" "${C[@]}"; do ip netns del $n 2>/dev/null || true; done
    rm -f /var/run/wireguard/fc*$t.sock
    rm -rf $d
}
trap cleanup EXIT
umask 077

ip netns add $R
ip -n $R link set lo up
ip netns exec $R sysctl -qw net.ipv4.ip_forward=1
ip netns exec $R sysctl -qw net.ipv4.fib_multipath_hash_policy=1
ip netns exec $R sysctl -qw net.ipv4.conf.all.ignore_routes_with_linkdown=1

gk=$(wg genkey); gpub=$(echo "$gk" | wg pubkey)
declare -a ck cpub
for i in $(seq 1 "$N"); do ck[$i]=$(wg genkey); cpub[$i]=$(echo "${ck[$i]}" | wg pubkey); done

for g in 0 1; do
    n=${G[$g]}; ip netns add $n; ip -n $n link set lo up
    ip link add rg$g$t netns $R type veth peer name wan$g$t netns $n
    ip -n $R addr add 10.60.$g.1/24 dev rg$g$t; ip -n $R link set rg$g$t up
    # A veth takes frames an XDP program sends it only with NAPI on (GRO),
    # as the suite's labs do; a physical NIC needs nothing.
    ip netns exec $R ethtool -K rg$g$t gro on >/dev/null
    ip -n $n addr add 10.60.$g.2/24 dev wan$g$t; ip -n $n link set wan$g$t up
    ip -n $n route add default via 10.60.$g.1
    ip -n $n addr add $ANY/32 dev lo
    {
        printf '[Interface]\nPrivateKey = %s\nListenPort = 51820\nAddress = 10.99.0.1/24\n' "$gk"
        printf '[Appliance]\nWAN = wan%s%s\n' $g $t
        for i in $(seq 1 "$N"); do
            printf '[Peer]\nPublicKey = %s\nAllowedIPs = 10.99.0.%d/32\n' "${cpub[$i]}" $((10 + i))
        done
    } > $d/fw$g$t.conf
    ip netns exec $n "$BIN" up $d/fw$g$t.conf >/dev/null
done
ip -n $R route add $ANY/32 nexthop via 10.60.0.2 dev rg0$t nexthop via 10.60.1.2 dev rg1$t

for i in $(seq 1 "$N"); do
    n=${C[$((i-1))]}; ip netns add $n; ip -n $n link set lo up
    ip link add rc$i$t netns $R type veth peer name cl$i$t netns $n
    ip -n $R addr add 10.61.$i.1/24 dev rc$i$t; ip -n $R link set rc$i$t up
    ip -n $n addr add 10.61.$i.2/24 dev cl$i$t; ip -n $n link set cl$i$t up
    ip -n $n route add default via 10.61.$i.1
    ip netns exec $n wireguard-go fc$i$t >/dev/null 2>&1
    echo "${ck[$i]}" > $d/c$i.key
    ip netns exec $n wg set fc$i$t private-key $d/c$i.key listen-port $((40000 + i)) \
        peer "$gpub" endpoint $ANY:51820 allowed-ips 10.99.0.0/24
    ip -n $n addr add 10.99.0.$((10 + i))/24 dev fc$i$t
    ip -n $n link set fc$i$t up
done

# Traffic: every client pings the gateway's tunnel address every 100 ms,
# with a timestamp per reply.
for i in $(seq 1 "$N"); do
    ip netns exec ${C[$((i-1))]} stdbuf -oL ping -D -i 0.1 -W 1 10.99.0.1 > $d/ping$i.log 2>&1 &
done
sleep 4
on=()
for i in $(seq 1 "$N"); do
    g=none
    for k in 0 1; do
        if ip netns exec ${G[$k]} wg show fw$k$t latest-handshakes | grep -q "${cpub[$i]}.*[1-9]"; then g=$k; fi
    done
    on[$i]=$g
done
echo "clients on gateway 1: $(for i in $(seq 1 "$N"); do [ "${on[$i]}" = 0 ] && printf '%s ' $i; done)"
echo "clients on gateway 2: $(for i in $(seq 1 "$N"); do [ "${on[$i]}" = 1 ] && printf '%s ' $i; done)"

kill_at=$(date +%s.%N)
ip -n $R link set rg0$t down
echo "gateway 1's link down at $kill_at"
sleep "${WAIT:-40}"
pkill -INT -f "ping -D -i 0.1 -W 1 10.99.0.1" || true
sleep 0.5

for i in $(seq 1 "$N"); do
    # The first reply after the kill, and the last one before it.
    python3 - $d/ping$i.log "$kill_at" "$i" "${on[$i]}" <<'PY'
import re, sys
log, k, i, on = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
ts = [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\].*bytes from", open(log).read(), re.M)]
before = [t for t in ts if t <= k]
after = [t for t in ts if t > k]
gw = {"0": "gateway 1 (killed)", "1": "gateway 2"}.get(on, "no handshake seen")
if not after:
    print(f"client {i} on {gw}: no reply since the kill")
else:
    # The longest silence from the last reply before the kill on.
    seq = ([before[-1]] if before else [k]) + after
    gap, at = max((b - a, a) for a, b in zip(seq, seq[1:]))
    print(f"client {i} on {gw}: longest silence {gap:.2f} s, from {at - k:+.2f} s after the kill")
PY
done
echo "gateway 2's view:"
ip netns exec ${G[1]} wg show fw1$t latest-handshakes | awk '{print "  " substr($1,1,8) "… " ($2 > 0 ? "handshake" : "never")}'
