//! Cryptokey routing: the AllowedIPs table, prefix → peer, for IPv4 and IPv6.
//!
//! Outgoing packets go to the peer owning the longest prefix that matches
//! the destination; incoming packets are accepted only if their source maps
//! back to the peer they came from. Invariants, as `wg` and the driver keep
//! them: host bits are masked off on insert (`10.0.0.7/24` is stored as
//! `10.0.0.0/24`); a prefix belongs to exactly one peer, so adding it for
//! another peer moves it; removing a peer removes all its prefixes. This is
//! the control plane's copy; the data path's LPM tries are filled from it.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Longest-prefix-match table generic over the peer identifier.
#[derive(Debug, Clone)]
pub struct AllowedIps<P> {
    /// prefix length → (masked address → peer), for each family.
    v4: BTreeMap<u8, HashMap<u32, P>>,
    v6: BTreeMap<u8, HashMap<u128, P>>,
}

impl<P> Default for AllowedIps<P> {
    fn default() -> Self {
        AllowedIps {
            v4: BTreeMap::new(),
            v6: BTreeMap::new(),
        }
    }
}

fn mask4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl<P: Clone + Eq + Hash> AllowedIps<P> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `net` for `peer` (host bits masked). Returns the peer it was
    /// taken from, if it belonged to another one.
    pub fn insert(&mut self, net: IpNet, peer: P) -> Option<P> {
        let prev = match net.trunc() {
            IpNet::V4(n) => self
                .v4
                .entry(n.prefix_len())
                .or_default()
                .insert(u32::from(n.network()), peer.clone()),
            IpNet::V6(n) => self
                .v6
                .entry(n.prefix_len())
                .or_default()
                .insert(u128::from(n.network()), peer.clone()),
        };
        prev.filter(|p| *p != peer)
    }

    /// Remove one prefix (host bits masked); returns its peer.
    pub fn remove(&mut self, net: IpNet) -> Option<P> {
        match net.trunc() {
            IpNet::V4(n) => {
                let m = self.v4.get_mut(&n.prefix_len())?;
                let p = m.remove(&u32::from(n.network()));
                if m.is_empty() {
                    self.v4.remove(&n.prefix_len());
                }
                p
            }
            IpNet::V6(n) => {
                let m = self.v6.get_mut(&n.prefix_len())?;
                let p = m.remove(&u128::from(n.network()));
                if m.is_empty() {
                    self.v6.remove(&n.prefix_len());
                }
                p
            }
        }
    }

    /// Remove every prefix of `peer`; returns how many were removed.
    pub fn remove_peer(&mut self, peer: &P) -> usize {
        let mut n = 0;
        for m in self.v4.values_mut() {
            let before = m.len();
            m.retain(|_, p| p != peer);
            n += before - m.len();
        }
        for m in self.v6.values_mut() {
            let before = m.len();
            m.retain(|_, p| p != peer);
            n += before - m.len();
        }
        self.v4.retain(|_, m| !m.is_empty());
        self.v6.retain(|_, m| !m.is_empty());
        n
    }

    /// The peer owning the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&P> {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .rev()
                    .find_map(|(len, m)| m.get(&(a & mask4(*len))))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .rev()
                    .find_map(|(len, m)| m.get(&(a & mask6(*len))))
            }
        }
    }

    /// Every (prefix, peer), IPv4 first, each family by prefix length then
    /// address; deterministic, for `wg show` and for syncing BPF maps.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &P)> + '_ {
        let v4 = self.v4.iter().flat_map(|(len, m)| {
            let mut v: Vec<_> = m.iter().collect();
            v.sort_by_key(|(a, _)| **a);
            v.into_iter().filter_map(move |(a, p)| {
                Ipv4Net::new((*a).into(), *len)
                    .ok()
                    .map(|n| (IpNet::V4(n), p))
            })
        });
        let v6 = self.v6.iter().flat_map(|(len, m)| {
            let mut v: Vec<_> = m.iter().collect();
            v.sort_by_key(|(a, _)| **a);
            v.into_iter().filter_map(move |(a, p)| {
                Ipv6Net::new((*a).into(), *len)
                    .ok()
                    .map(|n| (IpNet::V6(n), p))
            })
        });
        v4.chain(v6)
    }

    /// The prefixes of one peer.
    pub fn prefixes_of<'a>(&'a self, peer: &'a P) -> impl Iterator<Item = IpNet> + 'a {
        self.iter().filter(move |(_, p)| *p == peer).map(|(n, _)| n)
    }

    pub fn len(&self) -> usize {
        self.v4.values().map(HashMap::len).sum::<usize>()
            + self.v6.values().map(HashMap::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins_and_host_bits_are_masked() {
        let mut t = AllowedIps::new();
        t.insert(net("0.0.0.0/0"), 'a');
        t.insert(net("10.0.0.7/8"), 'b');
        t.insert(net("10.1.0.0/16"), 'c');
        t.insert(net("10.1.2.3/32"), 'd');
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(&'d'));
        assert_eq!(t.lookup(ip("10.1.2.4")), Some(&'c'));
        assert_eq!(t.lookup(ip("10.2.0.1")), Some(&'b'));
        assert_eq!(t.lookup(ip("192.0.2.1")), Some(&'a'));
        assert_eq!(
            t.prefixes_of(&'b').collect::<Vec<_>>(),
            vec![net("10.0.0.0/8")]
        );
        assert_eq!(t.lookup(ip("::1")), None, "families are separate");
        t.insert(net("2001:db8::1/32"), 'e');
        t.insert(net("::/0"), 'f');
        assert_eq!(t.lookup(ip("2001:db8:ffff::9")), Some(&'e'));
        assert_eq!(t.lookup(ip("2001:db9::")), Some(&'f'));
        assert_eq!(
            t.prefixes_of(&'e').collect::<Vec<_>>(),
            vec![net("2001:db8::/32")]
        );
    }

    #[test]
    fn readding_moves_and_remove_peer_removes_all() {
        let mut t = AllowedIps::new();
        assert_eq!(t.insert(net("192.168.1.0/24"), 1), None);
        assert_eq!(
            t.insert(net("192.168.1.99/24"), 2),
            Some(1),
            "moved from peer 1"
        );
        assert_eq!(
            t.insert(net("192.168.1.0/24"), 2),
            None,
            "same owner: no move"
        );
        assert_eq!(t.lookup(ip("192.168.1.5")), Some(&2));
        t.insert(net("fd00::/64"), 2);
        t.insert(net("10.0.0.0/8"), 1);
        assert_eq!(t.len(), 3);
        assert_eq!(t.remove_peer(&2), 2);
        assert_eq!(t.lookup(ip("192.168.1.5")), None);
        assert_eq!(t.lookup(ip("fd00::1")), None);
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove(net("10.9.9.9/8")), Some(1));
        assert!(t.is_empty());
    }

    fn brute<P: Clone>(entries: &[(IpNet, P)], a: IpAddr) -> Option<P> {
        // Last insert of an identical (masked) prefix wins; longest match.
        let mut best: Option<(u8, P)> = None;
        let mut table: Vec<(IpNet, P)> = Vec::new();
        for (n, p) in entries {
            let n = n.trunc();
            table.retain(|(m, _)| *m != n);
            table.push((n, p.clone()));
        }
        for (n, p) in table {
            if n.contains(&a) && best.as_ref().is_none_or(|(l, _)| n.prefix_len() > *l) {
                best = Some((n.prefix_len(), p));
            }
        }
        best.map(|(_, p)| p)
    }

    fn arb_net() -> impl Strategy<Value = IpNet> {
        // Small address spaces so prefixes overlap often.
        prop_oneof![
            (any::<u8>(), any::<u8>(), 0u8..=32).prop_map(|(a, b, l)| {
                IpNet::V4(Ipv4Net::new(Ipv4Addr::new(10, a & 3, b, a), l).unwrap())
            }),
            (any::<u16>(), any::<u16>(), 0u8..=128).prop_map(|(a, b, l)| {
                IpNet::V6(Ipv6Net::new(Ipv6Addr::new(0xfd00, a & 3, 0, 0, 0, 0, b, a), l).unwrap())
            }),
        ]
    }

    fn arb_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (any::<u8>(), any::<u8>()).prop_map(|(a, b)| IpAddr::V4(Ipv4Addr::new(
                10,
                a & 3,
                b,
                a
            ))),
            (any::<u16>(), any::<u16>()).prop_map(|(a, b)| IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                a & 3,
                0,
                0,
                0,
                0,
                b,
                a
            ))),
        ]
    }

    proptest! {
        #[test]
        fn matches_brute_force_longest_match(
            entries in proptest::collection::vec((arb_net(), 0u8..4), 0..40),
            removed_peer in proptest::option::of(0u8..4),
            probes in proptest::collection::vec(arb_addr(), 1..40),
        ) {
            let mut t = AllowedIps::new();
            for (n, p) in &entries {
                t.insert(*n, *p);
            }
            let mut model = entries.clone();
            if let Some(r) = removed_peer {
                t.remove_peer(&r);
                // Model: drop the peer's final ownerships only.
                let mut owned: Vec<(IpNet, u8)> = Vec::new();
                for (n, p) in &entries {
                    let n = n.trunc();
                    owned.retain(|(m, _)| *m != n);
                    owned.push((n, *p));
                }
                model = owned.into_iter().filter(|(_, p)| *p != r).collect();
            }
            for a in probes {
                prop_assert_eq!(t.lookup(a).copied(), brute(&model, a), "addr {}", a);
            }
            // Every stored prefix is masked and listed once.
            let listed: Vec<_> = t.iter().map(|(n, _)| n).collect();
            prop_assert_eq!(listed.len(), t.len());
            for n in listed {
                prop_assert_eq!(n, n.trunc());
            }
        }
    }
}
