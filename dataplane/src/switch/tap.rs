//! Copies of the frames the switch sees on one network, for `vxmesh trace`:
//! operators look at an overlay without entering namespaces. Off, it costs the
//! switch one branch per frame; on, a copy per matching frame into a bounded
//! queue (a full queue drops the copy and counts it, never the frame).

use std::net::IpAddr;
use std::sync::mpsc::{SyncSender, TrySendError};

/// Which frames a trace keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapFilter {
    All,
    Arp,
    /// IPv4 or IPv6 with this next protocol (1 icmp, 6 tcp, 17 udp, 58 icmpv6).
    Proto(u8),
    /// IP packets from or to this address (ARP: sender or target).
    Host(IpAddr),
    /// TCP or UDP packets from or to this port.
    Port(u16),
}

impl std::str::FromStr for TapFilter {
    type Err = String;

    /// `arp`, `icmp`, `icmp6`, `tcp`, `udp`, `host IP` or `port N` (tcpdump's
    /// words for the same things); empty means every frame.
    fn from_str(s: &str) -> Result<Self, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        Ok(match words.as_slice() {
            [] => TapFilter::All,
            ["arp"] => TapFilter::Arp,
            ["icmp"] => TapFilter::Proto(1),
            ["tcp"] => TapFilter::Proto(6),
            ["udp"] => TapFilter::Proto(17),
            ["icmp6"] => TapFilter::Proto(58),
            ["host", ip] => TapFilter::Host(
                ip.parse()
                    .map_err(|_| format!("filter {s:?}: {ip:?} is not an IP address"))?,
            ),
            ["port", p] => TapFilter::Port(
                p.parse()
                    .map_err(|_| format!("filter {s:?}: {p:?} is not a port number"))?,
            ),
            _ => {
                return Err(format!(
                    "filter {s:?}: use arp, icmp, icmp6, tcp, udp, \"host IP\" or \"port N\""
                ))
            }
        })
    }
}

/// (next protocol, source, destination, L4 offset) of an IPv4/IPv6 frame.
fn ip_of(f: &[u8]) -> Option<(u8, IpAddr, IpAddr, usize)> {
    match f.get(12..14)? {
        [0x08, 0x00] => {
            let ip = f.get(14..34)?;
            let a = |o: usize| IpAddr::from([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
            let ihl = crate::wire::ipv4::Packet::new_unchecked(ip).header_len();
            Some((ip[9], a(12), a(16), 14 + ihl))
        }
        [0x86, 0xdd] => {
            let ip = f.get(14..54)?;
            let a = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&ip[o..o + 16]);
                IpAddr::from(b)
            };
            Some((ip[6], a(8), a(24), 54))
        }
        _ => None,
    }
}

impl TapFilter {
    pub fn matches(&self, f: &[u8]) -> bool {
        let arp = f.get(12..14) == Some(&[0x08, 0x06][..]);
        match *self {
            TapFilter::All => true,
            TapFilter::Arp => arp,
            TapFilter::Proto(p) => ip_of(f).is_some_and(|(q, ..)| q == p),
            TapFilter::Host(h) => {
                if arp {
                    let Some(a) = f.get(14..42) else { return false };
                    let v4 = |o: usize| IpAddr::from([a[o], a[o + 1], a[o + 2], a[o + 3]]);
                    return v4(14) == h || v4(24) == h;
                }
                ip_of(f).is_some_and(|(_, s, d, _)| s == h || d == h)
            }
            TapFilter::Port(p) => ip_of(f).is_some_and(|(q, _, _, l4)| {
                matches!(q, 6 | 17)
                    && f.get(l4..l4 + 4).is_some_and(|t| {
                        u16::from_be_bytes([t[0], t[1]]) == p
                            || u16::from_be_bytes([t[2], t[3]]) == p
                    })
            }),
        }
    }
}

/// One worker's end of a trace, as the control plane hands it over: what to
/// copy, and the queue the copies go to. The worker keeps the queue; the
/// switch gets only the [`Tracer`] (a sans-IO core holds no channel).
#[derive(Debug, Clone)]
pub struct Tap {
    vni: u32,
    filter: TapFilter,
    sink: SyncSender<Vec<u8>>,
}

impl Tap {
    pub fn new(vni: u32, filter: TapFilter, sink: SyncSender<Vec<u8>>) -> Self {
        Self { vni, filter, sink }
    }

    /// What the switch needs to pick the frames to copy.
    pub fn tracer(&self) -> Tracer {
        Tracer::new(self.vni, self.filter)
    }

    /// Hands a copied frame to the trace's queue; false when the queue was
    /// full (the copy is lost, the frame is not).
    pub fn send(&self, frame: Vec<u8>) -> bool {
        !matches!(self.sink.try_send(frame), Err(TrySendError::Full(_)))
    }

    /// Offers a frame seen on network `vni`; false when it matched but the
    /// queue was full.
    pub fn offer(&self, vni: u32, frame: &[u8]) -> bool {
        if vni != self.vni || !self.filter.matches(frame) {
            return true;
        }
        self.send(frame.to_vec())
    }
}

/// Copies of the frames a running trace matches, kept until the worker takes
/// them (after each batch, see [`crate::datapath::Datapath::poll_traced`]).
/// Bounded: past [`Tracer::MAX`] waiting, copies are lost (`trace_lost`).
#[derive(Debug)]
pub struct Tracer {
    vni: u32,
    filter: TapFilter,
    frames: std::collections::VecDeque<Vec<u8>>,
}

impl Tracer {
    /// Copies waiting at most (a batch is 64 frames: the worker takes them
    /// long before).
    pub const MAX: usize = 1024;

    pub fn new(vni: u32, filter: TapFilter) -> Self {
        Self {
            vni,
            filter,
            frames: std::collections::VecDeque::new(),
        }
    }

    /// Copies a frame seen on network `vni` if the trace wants it; false
    /// when it did but no room was left.
    pub fn offer(&mut self, vni: u32, frame: &[u8]) -> bool {
        if vni != self.vni || !self.filter.matches(frame) {
            return true;
        }
        if self.frames.len() >= Self::MAX {
            return false;
        }
        // a copy per traced frame, only while a trace runs (as before)
        self.frames.push_back(frame.to_vec());
        true
    }

    /// The oldest copy not taken yet.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        self.frames.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_like_tcpdump_words_and_match() {
        let icmp = {
            let mut f = vec![0u8; 14 + 20 + 8];
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f[14] = 0x45;
            f[14 + 9] = 1;
            f[26..30].copy_from_slice(&[10, 0, 0, 2]);
            f[30..34].copy_from_slice(&[10, 0, 0, 3]);
            f
        };
        let f = |s: &str| s.parse::<TapFilter>().unwrap();
        assert!(f("").matches(&icmp));
        assert!(f("icmp").matches(&icmp));
        assert!(!f("tcp").matches(&icmp));
        assert!(f("host 10.0.0.3").matches(&icmp));
        assert!(!f("host 10.0.0.4").matches(&icmp));
        assert!(!f("port 80").matches(&icmp));
        assert!(!f("arp").matches(&icmp));
        assert!(!f("icmp").matches(&icmp[..20]), "truncated");
        for bad in ["host x", "port 70000", "tcp port", "ether"] {
            assert!(bad.parse::<TapFilter>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_full_queue_loses_the_copy_only() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let tap = Tap::new(7, TapFilter::All, tx);
        assert!(tap.offer(7, b"one"));
        assert!(!tap.offer(7, b"two"), "full");
        assert!(tap.offer(8, b"other network"), "not traced");
        assert_eq!(rx.try_recv().unwrap(), b"one");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any filter text parses or is refused, and a filter matches any frame
        /// without panicking.
        #[test]
        fn any_filter_any_frame(
            text in "(arp|icmp6?|tcp|udp|host|port| |[0-9a-f.:]){0,12}",
            frame in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            if let Ok(f) = text.parse::<TapFilter>() {
                let _ = f.matches(&frame);
            }
        }
    }
}
