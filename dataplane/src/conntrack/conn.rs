//! A connection as the table stores it: both keys folded into one record,
//! because a reply always answers the client (its destination is the client's
//! address and port), so only the backend's end is new. (40 bytes for IPv4 when
//! addresses were 4 bytes; addresses are now either family.)

use super::{Key, State};
use crate::Mac;
use std::net::IpAddr;

const FIN_ORIG: u8 = 1;
const FIN_REPLY: u8 = 2;
const VIA: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Conn {
    zone: u32,
    client: IpAddr,
    /// What the client addressed: a VIP, the ingress sandbox, or (on a task's
    /// node, for a connection from another node's ingress) the task itself.
    addressed: IpAddr,
    backend_ip: IpAddr,
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
    /// `orig` reversed ([`super::Conntrack::insert`] builds it so).
    pub fn new(orig: Key, reply: Key, service: u32, backend: u32, state: State) -> Self {
        Self {
            zone: orig.zone,
            client: orig.src,
            addressed: orig.dst,
            backend_ip: reply.src,
            service,
            backend,
            client_port: orig.sport,
            addressed_port: orig.dport,
            backend_port: reply.sport,
            proto: orig.proto,
            state,
            flags: 0,
            via: [0; 6],
        }
    }

    pub fn orig(&self) -> Key {
        Key {
            zone: self.zone,
            proto: self.proto,
            src: self.client,
            dst: self.addressed,
            sport: self.client_port,
            dport: self.addressed_port,
        }
    }

    pub fn reply(&self) -> Key {
        Key {
            zone: self.zone,
            proto: self.proto,
            src: self.backend_ip,
            dst: self.client,
            sport: self.backend_port,
            dport: self.client_port,
        }
    }

    pub fn zone(&self) -> u32 {
        self.zone
    }

    pub fn backend_ip(&self) -> IpAddr {
        self.backend_ip
    }

    pub fn fins(&self) -> (bool, bool) {
        (self.flags & FIN_ORIG != 0, self.flags & FIN_REPLY != 0)
    }

    pub fn set_fins(&mut self, orig: bool, reply: bool) {
        self.flags &= !(FIN_ORIG | FIN_REPLY);
        self.flags |= if orig { FIN_ORIG } else { 0 } | if reply { FIN_REPLY } else { 0 };
    }

    pub fn via(&self) -> Option<Mac> {
        (self.flags & VIA != 0).then_some(self.via)
    }

    pub fn set_via(&mut self, via: Mac) {
        self.flags |= VIA;
        self.via = via;
    }
}
