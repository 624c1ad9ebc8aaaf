//! Wire-format constants for the headers the data path parses.
//!
//! Offsets and sizes only: the BPF side reads fields through one bounds-checked
//! accessor, so no header struct with alignment assumptions is needed.

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const IPV4_MIN_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;

pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// IPv4 flags/fragment-offset field: "more fragments" bit and offset mask.
pub const IPV4_MF: u16 = 0x2000;
pub const IPV4_OFFSET_MASK: u16 = 0x1FFF;

/// IPv6 fragment header: offset mask in the 16-bit offset/flags field.
pub const IPV6_FRAG_OFFSET_MASK: u16 = 0xFFF8;

/// How many IPv6 extension headers (hop-by-hop, routing, destination options)
/// the classifier walks before giving up and passing the packet to the kernel.
pub const IPV6_MAX_EXT_HEADERS: usize = 4;
