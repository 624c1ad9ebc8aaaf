//! Crafted frames for BPF_PROG_TEST_RUN: Ethernet (optionally one VLAN tag),
//! IPv4 (with options, fragment fields) or IPv6 (with extension headers or a
//! fragment header), UDP. Only what the classifier reads is filled in with
//! care; checksums are left zero (XDP does not verify them).

/// How the IP layer of a crafted frame looks.
#[derive(Clone, Debug)]
pub enum Ip {
    V4 {
        /// IPv4 options, padded by the builder to a multiple of 4 bytes.
        options: Vec<u8>,
        /// The 16-bit flags/fragment-offset field.
        frag: u16,
    },
    V6 {
        /// Extension headers before UDP: (type, total length in bytes,
        /// a multiple of 8 and at least 8). Hop-by-hop, routing, dst options.
        ext: Vec<(u8, usize)>,
        /// A fragment header (offset/flags field) right before UDP.
        frag: Option<u16>,
    },
}

impl Ip {
    pub fn v4() -> Self {
        Ip::V4 {
            options: Vec::new(),
            frag: 0,
        }
    }
    pub fn v6() -> Self {
        Ip::V6 {
            ext: Vec::new(),
            frag: None,
        }
    }
}

/// A frame to build.
#[derive(Clone, Debug)]
pub struct Frame {
    pub vlan: Option<u16>,
    pub ip: Ip,
    /// IP protocol (IPv4) or final next header (IPv6); 17 is UDP.
    pub proto: u8,
    pub dport: u16,
    pub payload: Vec<u8>,
    /// Overrides the UDP length field (to craft lies).
    pub udp_len: Option<u16>,
}

impl Frame {
    pub fn udp(ip: Ip, dport: u16, payload: Vec<u8>) -> Self {
        Self {
            vlan: None,
            ip,
            proto: 17,
            dport,
            payload,
            udp_len: None,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128 + self.payload.len());
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
        if let Some(tag) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&tag.to_be_bytes());
        }
        let udp_total = 8 + self.payload.len();
        let mut l4 = Vec::with_capacity(udp_total);
        l4.extend_from_slice(&40000u16.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        l4.extend_from_slice(&self.udp_len.unwrap_or(udp_total as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        l4.extend_from_slice(&self.payload);
        match &self.ip {
            Ip::V4 { options, frag } => {
                let mut opts = options.clone();
                while opts.len() % 4 != 0 {
                    opts.push(0); // end-of-options padding
                }
                let hlen = 20 + opts.len();
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                f.push(0x40 | (hlen / 4) as u8);
                f.push(0);
                f.extend_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
                f.extend_from_slice(&[0x12, 0x34]);
                f.extend_from_slice(&frag.to_be_bytes());
                f.push(64);
                f.push(self.proto);
                f.extend_from_slice(&[0, 0]);
                f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
                f.extend_from_slice(&opts);
            }
            Ip::V6 { ext, frag } => {
                f.extend_from_slice(&0x86DDu16.to_be_bytes());
                let mut chain: Vec<u8> = Vec::new();
                // Each header names the next; the last names UDP (or `proto`).
                let mut headers: Vec<(u8, Vec<u8>)> = ext
                    .iter()
                    .map(|&(ty, len)| {
                        let mut h = vec![0u8; len];
                        h[1] = (len / 8 - 1) as u8;
                        (ty, h)
                    })
                    .collect();
                if let Some(off) = frag {
                    let mut h = vec![0u8; 8];
                    h[2..4].copy_from_slice(&off.to_be_bytes());
                    headers.push((44, h));
                }
                let first = headers.first().map(|h| h.0).unwrap_or(self.proto);
                for i in 0..headers.len() {
                    let next = headers.get(i + 1).map(|h| h.0).unwrap_or(self.proto);
                    headers[i].1[0] = next;
                    chain.extend_from_slice(&headers[i].1);
                }
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
                f.push(first);
                f.push(64);
                f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
                f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
                f.extend_from_slice(&chain);
            }
        }
        f.extend_from_slice(&l4);
        f
    }
}

/// A UDP payload shaped like a WireGuard message: `ty`, three reserved
/// bytes, then filler up to `len` bytes in total.
pub fn wg_message(ty: u8, reserved: [u8; 3], len: usize) -> Vec<u8> {
    let mut m = vec![0xA5u8; len.max(4)];
    m[0] = ty;
    m[1..4].copy_from_slice(&reserved);
    m.truncate(len);
    m
}
