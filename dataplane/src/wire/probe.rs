//! The doctor's probe (`vxmesh doctor`): a VXLAN datagram one agent sends
//! another over the real underlay (or through the WireGuard tunnel), which the
//! other answers in place, so that reachability, the path MTU and the clock
//! offset between two nodes are measured on the very sockets, ports and path
//! the overlay's traffic takes.
//!
//! ```text
//! VXLAN header   I flag, VNI 0 (no network can have it: VNIs are 1-16777215)
//! Ethernet       dst 00:00:00:00:00:00, src 00:00:00:00:00:00, type 0x88b5
//!                (IEEE 802 local experimental: no stack takes it for its own)
//! body  0..4     "VXMP"
//!       4        version (1)
//!       5        kind: 1 request, 2 reply
//!       6..8     zero
//!       8..16    id: the requester's, echoed back
//!       16..24   the responder's wall clock, Unix milliseconds (0 in a request)
//!       24..     zero padding, to the size the requester wants to test
//! ```
//!
//! A reply is the request rewritten in place: the same length (so the way back
//! carries as many bytes as the way there, and an answer is never bigger than
//! what asked for it). Who is answered, and how often, the switch decides (see
//! `Switch::from_underlay`).

use super::ethernet;
use super::vxlan::{self, VXLAN_HEADER_LEN};
use thiserror::Error;

/// The VNI probes travel under: one no network is ever given.
pub const PROBE_VNI: u32 = 0;
/// The inner frame's EtherType (IEEE 802 local experimental 1).
pub const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const MAGIC: [u8; 4] = *b"VXMP";
const VERSION: u8 = 1;
const ETH: usize = ethernet::HEADER_LEN;
const BODY: usize = 24;
/// The smallest probe datagram (UDP payload): VXLAN header, Ethernet header, body.
pub const MIN_LEN: usize = VXLAN_HEADER_LEN + ETH + BODY;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Reply,
}

/// A parsed probe (the body's fields; its length is the datagram's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub kind: Kind,
    pub id: u64,
    /// The responder's wall clock, Unix ms (0 in a request).
    pub wall_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ProbeError {
    /// Not under the probe VNI, or not a probe frame there: ordinary VXLAN
    /// (or junk) for the switch to judge.
    #[error("not a probe")]
    NotProbe,
    /// A probe frame that is cut short, of another version or of no known kind.
    #[error("malformed probe")]
    Malformed,
}

/// Reads a probe out of a VXLAN datagram (UDP payload).
pub fn parse(datagram: &[u8]) -> Result<Probe, ProbeError> {
    let d = vxlan::Packet::new_checked(datagram).map_err(|_| ProbeError::NotProbe)?;
    if d.vni() != PROBE_VNI {
        return Err(ProbeError::NotProbe);
    }
    let frame = d.payload();
    let ours = ethernet::Frame::new_checked(frame)
        .is_ok_and(|f| f.ethertype().0.to_be_bytes() == ETHERTYPE);
    if !ours || frame.get(ETH..ETH + 4) != Some(&MAGIC[..]) {
        return Err(ProbeError::NotProbe);
    }
    let body = frame.get(ETH..ETH + BODY).ok_or(ProbeError::Malformed)?;
    if body[4] != VERSION || body[6..8] != [0, 0] {
        return Err(ProbeError::Malformed);
    }
    let kind = match body[5] {
        1 => Kind::Request,
        2 => Kind::Reply,
        _ => return Err(ProbeError::Malformed),
    };
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[o..o + 8]);
        u64::from_be_bytes(b)
    };
    Ok(Probe {
        kind,
        id: u64_at(8),
        wall_ms: u64_at(16),
    })
}

/// Writes a request with `id` filling all of `out` (the size to test, at least
/// [`MIN_LEN`]); `None` when `out` is too small.
pub fn emit_request(out: &mut [u8], id: u64) -> Option<()> {
    if out.len() < MIN_LEN {
        return None;
    }
    out.fill(0);
    let mut d = vxlan::Packet::new_unchecked(&mut out[..]);
    vxlan::Repr { vni: PROBE_VNI }.emit(&mut d);
    let frame = d.payload_mut();
    let ethertype = ethernet::EtherType(u16::from_be_bytes(ETHERTYPE));
    ethernet::Frame::new_unchecked(&mut frame[..]).set_ethertype(ethertype);
    let body = &mut frame[ETH..ETH + BODY];
    body[..4].copy_from_slice(&MAGIC);
    body[4] = VERSION;
    body[5] = 1;
    body[8..16].copy_from_slice(&id.to_be_bytes());
    Some(())
}

/// Turns a request ([`parse`] said so) into its reply, in place: the kind and
/// the responder's wall clock change, nothing else (so it is as long as the
/// request). Does nothing to a datagram shorter than [`MIN_LEN`].
pub fn make_reply(datagram: &mut [u8], wall_ms: u64) {
    let Some(body) = datagram.get_mut(VXLAN_HEADER_LEN + ETH..MIN_LEN) else {
        return;
    };
    body[5] = 2;
    body[16..24].copy_from_slice(&wall_ms.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_becomes_its_reply_in_place() {
        let mut d = vec![0xffu8; 1400];
        emit_request(&mut d, 0x0102_0304_0506_0708).unwrap();
        assert_eq!(
            parse(&d),
            Ok(Probe {
                kind: Kind::Request,
                id: 0x0102_0304_0506_0708,
                wall_ms: 0
            })
        );
        assert!(d[MIN_LEN..].iter().all(|b| *b == 0), "padding is zero");
        make_reply(&mut d, 1_700_000_000_123);
        assert_eq!(d.len(), 1400);
        assert_eq!(
            parse(&d),
            Ok(Probe {
                kind: Kind::Reply,
                id: 0x0102_0304_0506_0708,
                wall_ms: 1_700_000_000_123
            })
        );
        assert!(emit_request(&mut [0u8; MIN_LEN - 1], 1).is_none());
    }

    #[test]
    fn what_is_not_a_probe_or_a_bad_one_is_told_apart() {
        let mut d = vec![0u8; MIN_LEN];
        emit_request(&mut d, 7).unwrap();
        // another VNI: ordinary VXLAN
        let mut other = d.clone();
        vxlan::emit(&mut other, 42);
        assert_eq!(parse(&other), Err(ProbeError::NotProbe));
        // VNI 0 but not our frame
        let mut junk = d.clone();
        junk[VXLAN_HEADER_LEN + 12] = 0x08;
        assert_eq!(parse(&junk), Err(ProbeError::NotProbe));
        // ours, cut short, of another version, of no known kind
        assert_eq!(parse(&d[..MIN_LEN - 1]), Err(ProbeError::Malformed));
        assert_eq!(
            parse(&d[..VXLAN_HEADER_LEN + 14 + 4]),
            Err(ProbeError::Malformed)
        );
        for (at, v) in [(4, 2u8), (5, 3), (5, 0), (7, 1)] {
            let mut bad = d.clone();
            bad[VXLAN_HEADER_LEN + 14 + at] = v;
            assert_eq!(parse(&bad), Err(ProbeError::Malformed), "byte {at} = {v}");
        }
        assert_eq!(parse(&[]), Err(ProbeError::NotProbe));
        // a reply of something too short changes nothing and does not panic
        let mut short = [1u8; 10];
        make_reply(&mut short, 5);
        assert_eq!(short, [1u8; 10]);
    }

    proptest::proptest! {
        #[test]
        fn parse_and_reply_never_panic(mut data in proptest::collection::vec(proptest::num::u8::ANY, 0..96)) {
            if parse(&data).is_ok() {
                let n = data.len();
                make_reply(&mut data, u64::MAX);
                proptest::prop_assert_eq!(data.len(), n);
                proptest::prop_assert_eq!(parse(&data).map(|p| p.kind), Ok(Kind::Reply));
            }
        }
    }
}
