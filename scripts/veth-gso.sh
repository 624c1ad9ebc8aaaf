#!/bin/bash
# The bound on what superframes could buy (docs/performance.md, "What
# superframes could buy, bounded"): a plain veth pair between two scratch
# namespaces, MTU 1420, iperf3 TCP 1 stream for 5 s, with the sender's
# TSO/GSO on and off, twice each. Prints Mbit/s and the CPU % iperf3 reports
# for the sender and the receiver. Needs root, iproute2, ethtool, iperf3,
# python3. Usage: scripts/veth-gso.sh
set -eu
A=vgsoa$$
B=vgsob$$
cleanup() {
  ip netns del $A 2>/dev/null || true
  ip netns del $B 2>/dev/null || true
}
trap cleanup EXIT
ip netns add $A
ip netns add $B
ip link add va$$ netns $A type veth peer name vb$$ netns $B
ip -n $A addr add 10.77.0.1/24 dev va$$
ip -n $B addr add 10.77.0.2/24 dev vb$$
for ns in $A $B; do ip -n $ns link set lo up; done
ip -n $A link set va$$ mtu 1420 up
ip -n $B link set vb$$ mtu 1420 up
for mode in on off on off; do
  ip netns exec $A ethtool -K va$$ tso $mode gso $mode >/dev/null
  ip netns exec $B timeout 30 iperf3 -s -1 -D
  sleep 0.3
  r=$(ip netns exec $A timeout 30 iperf3 -c 10.77.0.2 -t 5 -J | python3 -c '
import json, sys
e = json.load(sys.stdin)["end"]
c = e["cpu_utilization_percent"]
mbit = e["sum_received"]["bits_per_second"] / 1e6
print("%.0f Mbit/s, sender %.0f%%, receiver %.0f%%" % (mbit, c["host_total"], c["remote_total"]))')
  echo "sender TSO/GSO $mode: $r"
done
