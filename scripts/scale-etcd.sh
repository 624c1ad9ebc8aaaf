#!/bin/bash
# Peer-source figures for docs/scale.md: etcd and wg-appliance in a
# scratch namespace, N peers written to etcd (transactions of 100 puts),
# the time from `up` to all N in the daemon, then 50 single changes (one
# AllowedIPs added to an existing peer's key) timed from etcdctl's reply
# to the daemon reporting that revision applied (UAPI `appliance=1`,
# `peer_source_state`). Needs root, etcd, etcdctl, wg, python3. Usage:
#   cargo build --release -p wg-appliance && scripts/scale-etcd.sh 10000
set -eu
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/wg-appliance}
N=${1:-10000}
ns=wgsce$$
ifn=wgse$$
d=$(mktemp -d)
cleanup() {
  ip netns exec $ns $BIN down $ifn >/dev/null 2>&1 || true
  [ -n "${etcd_pid:-}" ] && kill $etcd_pid 2>/dev/null || true
  ip netns del $ns 2>/dev/null || true
  rm -rf $d
}
trap cleanup EXIT
ip netns add $ns
ip -n $ns link set lo up
ip -n $ns link add wsa type veth peer name wsb
ip -n $ns addr add 10.200.0.1/24 dev wsa
ip -n $ns link set wsa up; ip -n $ns link set wsb up
ip netns exec $ns etcd --data-dir $d/etcd --listen-client-urls http://127.0.0.1:2379 \
  --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
  --log-level warn >/dev/null 2>&1 &
etcd_pid=$!
ctl() { ip netns exec $ns etcdctl --endpoints=http://127.0.0.1:2379 "$@"; }
for _ in $(seq 50); do ctl endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
umask 077
python3 - "$N" "$ifn" > $d/txns <<'PY'
import sys, os, base64
n, ifn = int(sys.argv[1]), sys.argv[2]
for i in range(n):
    if i % 100 == 0:
        print("\n", end="")
    pk = base64.b64encode(os.urandom(32)).decode()
    a = 0x0a400000 + i
    ip = f"{a>>24&255}.{a>>16&255}.{a>>8&255}.{a&255}"
    v = f"[Peer]\\nPublicKey = {pk}\\nAllowedIPs = {ip}/32\\n"
    print(f'put /s/{ifn}/peers/p{i:06d} "{v}"')
    if i % 100 == 99 or i == n - 1:
        print("\n")
        print("=====")
PY
python3 - $d/txns <<'PY' | while read -r f; do ctl txn < "$f" >/dev/null; done
import sys
parts = open(sys.argv[1]).read().split("=====\n")
for i, p in enumerate(parts):
    if p.strip():
        f = f"{sys.argv[1]}.{i}"
        open(f, "w").write(p)
        print(f)
PY
echo "etcd: $(ctl get --prefix /s/$ifn/peers/ --keys-only | grep -c .) keys"
k=$(wg genkey)
printf '[Interface]\nPrivateKey = %s\nListenPort = 51998\nAddress = 10.201.0.1/16\nTable = off\n[Appliance]\nWAN = wsa\nPeerSource = etcd://127.0.0.1:2379/s\n' "$k" > $d/$ifn.conf
t0=$(date +%s.%N)
ip netns exec $ns $BIN up $d/$ifn.conf >/dev/null
python3 - /var/run/wireguard/$ifn.sock "$N" "$t0" <<'PY'
import socket, sys, time
path, n, t0 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def ask(req):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(path); s.sendall(req)
    out = b""
    while not out.endswith(b"\n\n"):
        b = s.recv(65536)
        if not b: break
        out += b
    s.close(); return out.decode()
while True:
    st = [l for l in ask(b"appliance=1\n\n").splitlines() if l.startswith("peer_source_state=")]
    if st and f" peers {n} " in st[0]:
        break
    time.sleep(0.005)
print(f"{n} peers from etcd applied {time.time() - t0:.2f} s after `up` started (bring-up included)")
PY
grep -o 'peers loaded from etcd; watching.*' /var/log/wg-appliance/$ifn.log | head -1 | sed 's/^/daemon: /' 
ip netns exec $ns python3 - /var/run/wireguard/$ifn.sock "$ns" "$ifn" <<'PY'
import socket, sys, time, statistics, json
path, ns, ifn = sys.argv[1:4]
def ask(req):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(path); s.sendall(req)
    out = b""
    while not out.endswith(b"\n\n"):
        b = s.recv(65536)
        if not b: break
        out += b
    s.close(); return out.decode()
def applied():
    for l in ask(b"appliance=1\n\n").splitlines():
        if l.startswith("peer_source_state="):
            w = l.split()
            return int(w[w.index("revision") + 1]) if "revision" in w else 0
    return 0
# etcd's JSON gateway from inside the namespace (this script runs there,
# see below): one HTTP request per put, timed from before it is sent.
import base64, urllib.request
def put(key, val):
    body = json.dumps({"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(val.encode()).decode()}).encode()
    r = urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:2379/v3/kv/put", body), timeout=5)
    return int(json.loads(r.read())["header"]["revision"])
def get(key):
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    r = urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:2379/v3/kv/range", body), timeout=5)
    return base64.b64decode(json.loads(r.read())["kvs"][0]["value"]).decode()
lat = []
for i in range(50):
    key = f"/s/{ifn}/peers/p{i:06d}"
    val = get(key).rstrip("\n") + f"\nAllowedIPs = 10.{128 + i // 250}.{i % 250}.0/24\n"
    t0 = time.perf_counter()
    rev = put(key, val)
    while applied() < rev:
        time.sleep(0.0005)
    lat.append((time.perf_counter() - t0) * 1000)
lat.sort()
print(f"one AllowedIPs change from etcd: median {statistics.median(lat):.1f} ms, p90 {lat[int(len(lat) * 0.9)]:.1f} ms (from the put's request to the daemon reporting its revision applied; 50 changes)")
PY
