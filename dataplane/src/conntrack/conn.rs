//! A connection as the table stores it: both keys folded into one record,
//! because a reply always answers the client (its destination is the client's
//! address and port), so only the backend's end is new. 40 bytes instead of
//! two 20-byte keys plus the rest. An IPv6 connection keeps its three
//! addresses in a side array of the table's, by slot ([`Six`]), so IPv4
//! records stay this small and a table that never sees IPv6 spends no memory
//! on it.

use super::{Key, State};
use crate::Mac;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const FIN_ORIG: u8 = 1;
const FIN_REPLY: u8 = 2;
const VIA: u8 = 4;
/// The addresses are in the side array.
const V6: u8 = 8;
/// The client's last SYN has already counted as unanswered (passive health).
const SYN_COUNTED: u8 = 16;
/// Picked up mid-stream (a TCP segment without SYN, no entry): not trusted
/// until the backend answers it.
const PICKED: u8 = 32;

/// An IPv6 connection's client, addressed and backend addresses.
pub(super) type Six = [Ipv6Addr; 3];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Conn {
    zone: u32,
    client: Ipv4Addr,
    /// What the client addressed: a VIP, the ingress sandbox, or (on a task's
    /// node, for a connection from another node's ingress) the task itself.
    addressed: Ipv4Addr,
    backend_ip: Ipv4Addr,
    pub service: u32,
    pub backend: u32,
    client_port: u16,
    addressed_port: u16,
    backend_port: u16,
    pub proto: u8,
    pub state: State,
    flags: u8,
    via: Mac,
}

impl Conn {
    /// Only `reply`'s source (the backend's end) is kept: the rest of it is
    /// `orig` reversed ([`super::Conntrack::insert`] builds it so). The three
    /// addresses are one family ([`super::Conntrack::trackable`]); an IPv6
    /// connection's come back to be stored in the side array.
    pub fn new(
        orig: Key,
        reply: Key,
        service: u32,
        backend: u32,
        state: State,
    ) -> (Self, Option<Six>) {
        let mut c = Self {
            zone: orig.zone,
            client: Ipv4Addr::UNSPECIFIED,
            addressed: Ipv4Addr::UNSPECIFIED,
            backend_ip: Ipv4Addr::UNSPECIFIED,
            service,
            backend,
            client_port: orig.sport,
            addressed_port: orig.dport,
            backend_port: reply.sport,
            proto: orig.proto,
            state,
            flags: 0,
            via: [0; 6],
        };
        match (orig.src, orig.dst, reply.src) {
            (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(r)) => {
                (c.client, c.addressed, c.backend_ip) = (a, b, r);
                (c, None)
            }
            (a, b, r) => {
                c.flags |= V6;
                let six = |a: IpAddr| match a {
                    IpAddr::V6(a) => a,
                    IpAddr::V4(a) => a.to_ipv6_mapped(),
                };
                (c, Some([six(a), six(b), six(r)]))
            }
        }
    }

    /// The client's, addressed and backend addresses (`six`: the slot's
    /// entry of the side array, read only for an IPv6 connection).
    #[inline]
    fn addrs(&self, six: Option<&Six>) -> [IpAddr; 3] {
        match six {
            Some(s) if self.flags & V6 != 0 => s.map(IpAddr::V6),
            _ => [
                IpAddr::V4(self.client),
                IpAddr::V4(self.addressed),
                IpAddr::V4(self.backend_ip),
            ],
        }
    }

    pub fn is_v6(&self) -> bool {
        self.flags & V6 != 0
    }

    pub fn orig(&self, six: Option<&Six>) -> Key {
        let [client, addressed, _] = self.addrs(six);
        Key {
            zone: self.zone,
            proto: self.proto,
            src: client,
            dst: addressed,
            sport: self.client_port,
            dport: self.addressed_port,
        }
    }

    pub fn reply(&self, six: Option<&Six>) -> Key {
        let [client, _, backend] = self.addrs(six);
        Key {
            zone: self.zone,
            proto: self.proto,
            src: backend,
            dst: client,
            sport: self.backend_port,
            dport: self.client_port,
        }
    }

    pub fn backend_ip(&self, six: Option<&Six>) -> IpAddr {
        self.addrs(six)[2]
    }

    pub fn zone(&self) -> u32 {
        self.zone
    }

    pub fn fins(&self) -> (bool, bool) {
        (self.flags & FIN_ORIG != 0, self.flags & FIN_REPLY != 0)
    }

    pub fn set_fins(&mut self, orig: bool, reply: bool) {
        self.flags &= !(FIN_ORIG | FIN_REPLY);
        self.flags |= if orig { FIN_ORIG } else { 0 } | if reply { FIN_REPLY } else { 0 };
    }

    /// Whether the client's last SYN has already counted as a failure of the
    /// backend (by the sweep, [`super::Conntrack::expire_slots`]), so that
    /// it counts once whether the sweep or a retransmit sees it first.
    pub fn syn_counted(&self) -> bool {
        self.flags & SYN_COUNTED != 0
    }

    pub fn set_syn_counted(&mut self, counted: bool) {
        self.set_flag(SYN_COUNTED, counted);
    }

    /// Whether the connection was picked up mid-stream and its backend has
    /// not answered yet.
    pub fn picked(&self) -> bool {
        self.flags & PICKED != 0
    }

    pub fn set_picked(&mut self, on: bool) {
        self.set_flag(PICKED, on);
    }

    fn set_flag(&mut self, bit: u8, on: bool) {
        if on {
            self.flags |= bit;
        } else {
            self.flags &= !bit;
        }
    }

    pub fn via(&self) -> Option<Mac> {
        (self.flags & VIA != 0).then_some(self.via)
    }

    pub fn set_via(&mut self, via: Mac) {
        self.flags |= VIA;
        self.via = via;
    }
}
