#!/bin/bash
# Peer-scale figures for docs/scale.md: bring up wg-appliance in a scratch
# namespace, load N peers in one UAPI request (`wg addconf`), then time
# single in-place AllowedIPs changes (over the UAPI socket, and through
# `wg set`) and removals, and read the daemon's RSS and the interface's
# BPF map memory. Needs root, wg, bpftool, python3, bc. Usage:
#   cargo build --release -p wg-appliance && scripts/scale-peers.sh 10000
set -eu
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/wg-appliance}
N=${1:-10000}
ns=wgscale$$
ifn=wgsc$$
d=$(mktemp -d)
cleanup() { ip netns exec $ns $BIN down $ifn >/dev/null 2>&1 || true; ip netns del $ns 2>/dev/null || true; rm -rf $d; }
trap cleanup EXIT
ip netns add $ns
ip -n $ns link set lo up
ip -n $ns link add wsa type veth peer name wsb
ip -n $ns addr add 10.200.0.1/24 dev wsa
ip -n $ns link set wsa up; ip -n $ns link set wsb up
umask 077
k=$(wg genkey)
printf '[Interface]\nPrivateKey = %s\nListenPort = 51999\nAddress = 10.201.0.1/16\n[Appliance]\nWAN = wsa\n' "$k" > $d/$ifn.conf
ip netns exec $ns $BIN up $d/$ifn.conf >/dev/null
pid=$(pgrep -f "$BIN up $d/$ifn.conf" | head -1)
rss0=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
mapmem() {
  local pins tot=0 b
  pins=$(find /run/wg-appliance/bpf -maxdepth 2 -type d -name "$ifn" 2>/dev/null | head -1)
  for f in $(find "$pins" -type f); do
    b=$(bpftool map show pinned "$f" -j 2>/dev/null | python3 -c 'import json,sys
try: print(json.load(sys.stdin).get("bytes_memlock",0))
except Exception: print(0)')
    tot=$((tot + b))
  done
  echo $((tot/1024))
}
mm0=$(mapmem)
# N peers, each with a /32 in 10.64.0.0/10 and an endpoint.
python3 - "$N" > $d/peers.conf <<'PY'
import sys, os, base64
n=int(sys.argv[1])
for i in range(n):
    pk=base64.b64encode(os.urandom(32)).decode()
    a=0x0a400000+i
    ip=f"{a>>24&255}.{a>>16&255}.{a>>8&255}.{a&255}"
    print(f"[Peer]\nPublicKey = {pk}\nAllowedIPs = {ip}/32\nEndpoint = 192.0.2.{i%250+1}:{10000+i%50000}\n")
PY
t0=$(date +%s.%N)
ip netns exec $ns wg addconf $ifn $d/peers.conf
t1=$(date +%s.%N)
sleep 1
rss1=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
peers=$(ip netns exec $ns wg show $ifn peers | wc -l)
echo "peers loaded: $peers in $(echo "$t1 - $t0" | bc) s (wg addconf, one UAPI request)"
echo "daemon RSS: $rss0 KiB with 0 peers, $rss1 KiB with $peers"
mm1=$(mapmem)
echo "BPF maps of the interface: $mm0 KiB with 0 peers, $mm1 KiB with $peers"
# 200 single changes: AllowedIPs of existing peers replaced in place.
# 200 single AllowedIPs changes over the UAPI socket from one process: the
# daemon's apply time plus one socket round trip each.
ip netns exec $ns wg show $ifn peers | head -200 > $d/keys
python3 - /var/run/wireguard/$ifn.sock $d/keys <<'PY'
import socket, sys, time, base64, statistics
path, keys = sys.argv[1], [l.strip() for l in open(sys.argv[2]) if l.strip()]
lat = []
for i, k in enumerate(keys):
    hexkey = base64.b64decode(k).hex()
    req = f"set=1\npublic_key={hexkey}\nreplace_allowed_ips=true\nallowed_ip=10.{128+i//250}.{i%250}.0/24\n\n".encode()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    t0 = time.perf_counter()
    s.connect(path); s.sendall(req)
    out = b""
    while not out.endswith(b"\n\n"):
        b = s.recv(4096)
        if not b: break
        out += b
    lat.append((time.perf_counter() - t0) * 1000)
    s.close()
    assert b"errno=0" in out, out
lat.sort()
print(f"200 AllowedIPs changes over UAPI: median {statistics.median(lat):.2f} ms, p99 {lat[int(len(lat)*0.99)-1]:.2f} ms, max {lat[-1]:.2f} ms")
PY
mapfile -t keys < <(ip netns exec $ns wg show $ifn peers | head -200)
t0=$(date +%s.%N)
for i in "${!keys[@]}"; do
  ip netns exec $ns wg set $ifn peer "${keys[$i]}" allowed-ips 10.$((128+i/250)).$((i%250)).0/24 >/dev/null
done
t1=$(date +%s.%N)
echo "200 AllowedIPs changes, one wg set each: $(echo "($t1 - $t0)*1000/200" | bc -l | cut -c1-6) ms per change (incl. process start)"
t0=$(date +%s.%N)
for i in $(seq 1 200); do ip netns exec $ns wg show $ifn listen-port >/dev/null; done
t1=$(date +%s.%N)
echo "baseline: 200 'wg show listen-port': $(echo "($t1 - $t0)*1000/200" | bc -l | cut -c1-6) ms per call"
t0=$(date +%s.%N)
for i in $(seq 0 99); do ip netns exec $ns wg set $ifn peer "${keys[$i]}" remove; done
t1=$(date +%s.%N)
echo "100 removals: $(echo "($t1 - $t0)*1000/100" | bc -l | cut -c1-6) ms per removal (incl. process start)"
