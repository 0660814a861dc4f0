//! The embedded DNS: answers A/AAAA for names the control plane publishes
//! (service → VIP, `tasks.NAME` → every task, rotated; container names), at the
//! network's gateway address. The message format is hickory-proto's (its
//! `Message` is this protocol's Repr); the fixed header has a view here, so a
//! datagram that is no standard query is turned away before it is parsed. A
//! query is rare next to data frames, so building the answer may allocate.

use hickory_proto::op::{Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use std::net::IpAddr;

/// How long clients may cache an answer: short, since tasks come and go.
const TTL: u32 = 5;

pub const HEADER_LEN: usize = 12;

/// A view of a DNS message's fixed header (RFC 1035 4.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of a message holding the fixed header.
    pub fn new_checked(buffer: T) -> Result<Self, super::Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(super::Error::Truncated);
        }
        Ok(Self { buffer })
    }

    pub fn id(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[0], b[1]])
    }

    /// QR: a response, not a query.
    pub fn is_response(&self) -> bool {
        self.buffer.as_ref()[2] & 0x80 != 0
    }

    /// The operation (0: a standard query).
    pub fn opcode(&self) -> u8 {
        (self.buffer.as_ref()[2] >> 3) & 0x0f
    }

    pub fn question_count(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[4], b[5]])
    }
}

/// Answers the DNS query in `query` from `lookup` (a lowercase name without the
/// trailing dot → its addresses), rotating multi-address answers by `rotate`.
/// Returns the answer and how many address records it carries (the caller
/// advances its rotation only for those); `None` for anything that is not a
/// well-formed standard query.
pub fn answer(
    query: &[u8],
    rotate: usize,
    lookup: impl Fn(&str) -> Option<Vec<IpAddr>>,
) -> Option<(Vec<u8>, usize)> {
    let h = Packet::new_checked(query).ok()?;
    if h.is_response() || h.opcode() != 0 || h.question_count() == 0 {
        return None;
    }
    let req = Message::from_vec(query).ok()?;
    if req.metadata.message_type != MessageType::Query || req.metadata.op_code != OpCode::Query {
        return None;
    }
    let q = req.queries.first()?.clone();
    let mut resp = Message::response(req.metadata.id, OpCode::Query);
    resp.metadata = Metadata::response_from_request(&req.metadata);
    resp.metadata.authoritative = true;
    resp.add_query(q.clone());
    let name = q.name().to_lowercase().to_ascii();
    let name = name.trim_end_matches('.');
    match lookup(name) {
        None => {
            // not ours, and the node has no resolver to forward it to
            resp.metadata.response_code = ResponseCode::Refused;
        }
        Some(mut addrs) => {
            if !addrs.is_empty() {
                let k = rotate % addrs.len();
                addrs.rotate_left(k);
            }
            for a in addrs {
                let rdata = match (q.query_type(), a) {
                    (RecordType::A, IpAddr::V4(v4)) => RData::A(A(v4)),
                    (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                resp.add_answer(Record::from_rdata(q.name().clone(), TTL, rdata));
            }
        }
    }
    let n = resp.answers.len();
    resp.to_vec().ok().map(|b| (b, n))
}

/// Whether the query asks for a name `known` does not know (so it should go to
/// the node's resolvers). False for anything unparsable.
pub fn is_unknown(query: &[u8], known: impl Fn(&str) -> bool) -> bool {
    let Ok(req) = Message::from_vec(query) else {
        return false;
    };
    let Some(q) = req.queries.first() else {
        return false;
    };
    let name = q.name().to_lowercase().to_ascii();
    !known(name.trim_end_matches('.'))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    pub(crate) fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_str(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn table(n: &str) -> Option<Vec<IpAddr>> {
        match n {
            "api" => Some(vec!["10.0.0.100".parse().unwrap()]),
            "tasks.api" => Some(vec![
                "10.0.0.2".parse().unwrap(),
                "10.0.0.3".parse().unwrap(),
                "fd00::2".parse().unwrap(),
            ]),
            _ => None,
        }
    }

    fn ips(resp: &[u8]) -> (ResponseCode, Vec<String>) {
        let m = Message::from_vec(resp).unwrap();
        (
            m.metadata.response_code,
            m.answers.iter().map(|r| r.data.to_string()).collect(),
        )
    }

    #[test]
    fn the_header_view_reads_what_hickory_wrote() {
        let q = query("api.", RecordType::A);
        let h = Packet::new_checked(&q[..]).unwrap();
        assert_eq!((h.id(), h.is_response(), h.opcode()), (7, false, 0));
        assert_eq!(h.question_count(), 1);
        assert!(Packet::new_checked(&q[..11]).is_err());
        let r = answer(&q, 0, table).unwrap().0;
        assert!(Packet::new_checked(&r[..]).unwrap().is_response());
        assert_eq!(answer(&r, 0, table), None, "a response is not answered");
    }

    #[test]
    fn names_vips_tasks_rotated_and_refused() {
        let r = answer(&query("API.", RecordType::A), 0, table).unwrap().0;
        assert_eq!(
            ips(&r),
            (ResponseCode::NoError, vec!["10.0.0.100".to_string()])
        );
        let a = ips(&answer(&query("tasks.api.", RecordType::A), 0, table)
            .unwrap()
            .0)
        .1;
        let b = ips(&answer(&query("tasks.api.", RecordType::A), 1, table)
            .unwrap()
            .0)
        .1;
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], b[0], "rotated");
        let v6 = ips(&answer(&query("tasks.api.", RecordType::AAAA), 0, table)
            .unwrap()
            .0)
        .1;
        assert_eq!(v6, vec!["fd00::2".to_string()]);
        assert_eq!(
            ips(&answer(&query("example.org.", RecordType::A), 0, table)
                .unwrap()
                .0)
            .0,
            ResponseCode::Refused
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = answer(&data, 3, table);
            let _ = is_unknown(&data, |n| table(n).is_some());
        }

        /// Any query for any name and type is answered with a response to it
        /// (same id, the question echoed) whose records are all of that type.
        #[test]
        fn answers_echo_the_query(
            id in proptest::num::u16::ANY,
            name in "(tasks\\.)?(api|web|[a-z0-9][a-z0-9-]{0,9})(\\.[a-z]{1,5})?\\.",
            t in proptest::sample::select(vec![RecordType::A, RecordType::AAAA, RecordType::MX, RecordType::ANY]),
            rotate in 0usize..10,
        ) {
            let mut m = Message::new(id, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(Name::from_str(&name).unwrap(), t));
            let (resp, n) = answer(&m.to_vec().unwrap(), rotate, table).unwrap();
            let r = Message::from_vec(&resp).unwrap();
            proptest::prop_assert_eq!(r.metadata.id, id);
            proptest::prop_assert_eq!(r.metadata.message_type, MessageType::Response);
            proptest::prop_assert_eq!(r.answers.len(), n);
            proptest::prop_assert!(r.answers.iter().all(|a| a.record_type() == t));
        }
    }
}
