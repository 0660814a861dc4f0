//! The per-VNI L2 switch: a frame in, one [`Action`] out.
//!
//! Stages over one buffer: parse and validate the source (anti-spoofing), answer
//! ARP/ND for known endpoints, look the destination up (control-plane FDB, then
//! learned FDB), then deliver locally, encapsulate to a VTEP or replicate. Later
//! stages (conntrack/NAT, encryption) slot in between lookup and output.

mod fdb;
mod state;

pub use fdb::{LearnedFdb, AGEING_MS};
pub use state::{Location, NetworkView, PortId, PortView, SwitchState};

use crate::buf::PacketBuf;
use crate::counters::{Counters, DropReason};
use crate::wire::{flow_hash::flow_hash, icmp_too_big, neighbor, vxlan};
use crate::Mac;
use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice};
use std::net::IpAddr;

/// What the driver must do with the buffer after the core has looked at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'s> {
    /// Write the frame to this local port.
    Deliver(PortId),
    /// Send the datagram (VXLAN header + frame, [`PacketBuf::datagram`]) to this VTEP.
    /// `flow_hash` picks the outer UDP source port. `secure`: only inside the tunnel.
    Encap {
        vtep: IpAddr,
        flow_hash: u32,
        secure: bool,
    },
    /// Write the frame to each of `ports` but `skip`, and the datagram to each of `vteps`.
    Flood {
        ports: &'s [PortId],
        skip: Option<PortId>,
        vteps: &'s [IpAddr],
        flow_hash: u32,
        secure: bool,
    },
    /// The core wrote an answer (ARP reply, NA) over the frame: write it back to this port.
    Reply(PortId),
    /// Counted already.
    Drop(DropReason),
}

const ETH_HDR: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];

/// The switch of one worker: its learned FDB and counters. The desired state comes
/// in with each call, so a control-plane swap takes effect on the next frame.
pub struct Switch {
    learned: LearnedFdb,
    pub counters: Counters,
}

impl Switch {
    pub fn new(max_learned: usize) -> Self {
        Self {
            learned: LearnedFdb::new(max_learned),
            counters: Counters::default(),
        }
    }

    pub fn learned_len(&self) -> usize {
        self.learned.len()
    }

    /// Drops learned MACs whose VTEP is no longer a static peer of their VNI.
    pub fn prune_learned(&mut self, st: &SwitchState) {
        self.learned.retain(|vni, vtep| {
            st.networks
                .get(&vni)
                .is_some_and(|n| n.is_static_peer(vtep))
        });
    }

    fn drop<'s>(&mut self, r: DropReason) -> Action<'s> {
        self.counters.drop(r);
        Action::Drop(r)
    }

    /// A frame an endpoint sent on its port.
    pub fn from_port<'s>(
        &mut self,
        st: &'s SwitchState,
        port: PortId,
        buf: &mut PacketBuf,
        now_ms: u64,
    ) -> Action<'s> {
        self.counters.port_rx += 1;
        let Some(pv) = st.ports.get(&port) else {
            return self.drop(DropReason::UnknownPort);
        };
        let Some(net) = st.networks.get(&pv.vni) else {
            return self.drop(DropReason::UnknownVni);
        };
        let frame = buf.data();
        if frame.len() < ETH_HDR {
            return self.drop(DropReason::Malformed);
        }
        if frame[6..12] != pv.mac {
            return self.drop(DropReason::SpoofedSourceMac);
        }
        match [frame[12], frame[13]] {
            ETHERTYPE_ARP => {
                let Some(arp) = neighbor::parse_arp(frame) else {
                    return self.drop(DropReason::Malformed);
                };
                if arp.sender_mac != pv.mac {
                    return self.drop(DropReason::SpoofedSourceMac);
                }
                let sender = IpAddr::V4(arp.sender_ip);
                if !arp.sender_ip.is_unspecified() && !pv.ips.contains(&sender) {
                    return self.drop(DropReason::SpoofedSourceIp);
                }
                if arp.is_request {
                    if let Some(mac) = answer_for(net, pv, IpAddr::V4(arp.target_ip)) {
                        neighbor::write_arp_reply(buf.data_mut(), &arp, mac);
                        self.counters.neighbor_replies += 1;
                        return Action::Reply(port);
                    }
                }
            }
            ETHERTYPE_IPV4 => {
                let Ok(ip) = Ipv4HeaderSlice::from_slice(&frame[ETH_HDR..]) else {
                    return self.drop(DropReason::Malformed);
                };
                let src = ip.source_addr();
                if !src.is_unspecified() && !pv.ips.contains(&IpAddr::V4(src)) {
                    return self.drop(DropReason::SpoofedSourceIp);
                }
            }
            ETHERTYPE_IPV6 => {
                let Ok(ip) = Ipv6HeaderSlice::from_slice(&frame[ETH_HDR..]) else {
                    return self.drop(DropReason::Malformed);
                };
                let src = ip.source_addr();
                let link_local = src.segments()[0] & 0xffc0 == 0xfe80;
                if !src.is_unspecified() && !link_local && !pv.ips.contains(&IpAddr::V6(src)) {
                    return self.drop(DropReason::SpoofedSourceIp);
                }
                if let Some(ns) = neighbor::parse_solicitation(frame) {
                    if let Some(mac) = answer_for(net, pv, IpAddr::V6(ns.target)) {
                        if let Some(n) = neighbor::write_advertisement(buf.frame_room(), &ns, mac) {
                            buf.set_len(n);
                            self.counters.neighbor_replies += 1;
                            return Action::Reply(port);
                        }
                    }
                }
            }
            // Anything else (VLAN tags, raw L2 protocols) could carry addresses the
            // checks above never see.
            _ => return self.drop(DropReason::UnsupportedEtherType),
        }
        if net.mtu > 0 && buf.len() > usize::from(net.mtu) + ETH_HDR {
            return self.too_big(net, port, buf);
        }
        let frame = buf.data();
        let dst: Mac = [frame[0], frame[1], frame[2], frame[3], frame[4], frame[5]];
        if dst[0] & 1 == 1 {
            return self.flood(net, Some(port), buf);
        }
        if dst == net.gateway_mac {
            return self.drop(DropReason::NoRoute);
        }
        let vtep = match net.macs.get(&dst) {
            Some(Location::Local(p)) if *p == port => {
                return self.drop(DropReason::NoLocalDestination)
            }
            Some(Location::Local(p)) => return Action::Deliver(*p),
            Some(Location::Remote(v)) => Some(*v),
            None => self.learned.lookup(net.vni, &dst, now_ms),
        };
        match vtep {
            Some(vtep) => {
                let flow_hash = flow_hash(buf.data());
                if !buf.write_vxlan_header(net.vni) {
                    return self.drop(DropReason::TooBig);
                }
                Action::Encap {
                    vtep,
                    flow_hash,
                    secure: net.encrypted,
                }
            }
            None => self.flood(net, Some(port), buf),
        }
    }

    /// Answers an oversized packet with ICMP "fragmentation needed" / "packet too
    /// big" from the gateway, so the sender lowers its path MTU.
    fn too_big<'s>(&mut self, net: &NetworkView, port: PortId, buf: &mut PacketBuf) -> Action<'s> {
        let len = buf.len();
        let is_v6 = buf.data()[12..14] == ETHERTYPE_IPV6;
        let gw = net.gateways.iter().find(|g| g.is_ipv6() == is_v6).copied();
        let n = match gw {
            Some(IpAddr::V4(g)) => {
                icmp_too_big::write_v4(buf.frame_room(), len, net.gateway_mac, g, net.mtu)
            }
            Some(IpAddr::V6(g)) => {
                icmp_too_big::write_v6(buf.frame_room(), len, net.gateway_mac, g, net.mtu)
            }
            None => None,
        };
        match n {
            Some(n) if buf.set_len(n) => {
                self.counters.drop(DropReason::TooBig);
                Action::Reply(port)
            }
            _ => self.drop(DropReason::TooBig),
        }
    }

    fn flood<'s>(
        &mut self,
        net: &'s NetworkView,
        skip: Option<PortId>,
        buf: &mut PacketBuf,
    ) -> Action<'s> {
        self.counters.flooded += 1;
        let flow_hash = flow_hash(buf.data());
        // Frames from the underlay are never sent back to it (split horizon).
        let vteps: &[IpAddr] = if skip.is_some() { &net.members } else { &[] };
        if !vteps.is_empty() && !buf.write_vxlan_header(net.vni) {
            return self.drop(DropReason::TooBig);
        }
        Action::Flood {
            ports: &net.local_ports,
            skip,
            vteps,
            flow_hash,
            secure: net.encrypted,
        }
    }

    /// A VXLAN datagram (UDP payload) from VTEP `src`: plain from the underlay, or
    /// `secure` when it came out of a WireGuard tunnel (then `src` is the peer's
    /// tunnel address).
    pub fn from_underlay<'s>(
        &mut self,
        st: &'s SwitchState,
        src: IpAddr,
        buf: &mut PacketBuf,
        now_ms: u64,
        secure: bool,
    ) -> Action<'s> {
        self.counters.underlay_rx += 1;
        let vni = match vxlan::parse(buf.data()) {
            Ok(v) => v,
            Err(vxlan::VxlanError::Truncated) => return self.drop(DropReason::Malformed),
            Err(vxlan::VxlanError::NoVniFlag) => return self.drop(DropReason::BadVxlanHeader),
        };
        let Some(net) = st.networks.get(&vni) else {
            return self.drop(DropReason::UnknownVni);
        };
        if net.encrypted && !secure {
            return self.drop(DropReason::Unencrypted);
        }
        if !net.is_member(&src) {
            return self.drop(DropReason::NotMember);
        }
        buf.pull_front(vxlan::VXLAN_HEADER_LEN);
        let frame = buf.data();
        if frame.len() < ETH_HDR {
            return self.drop(DropReason::Malformed);
        }
        let smac: Mac = [frame[6], frame[7], frame[8], frame[9], frame[10], frame[11]];
        let dst: Mac = [frame[0], frame[1], frame[2], frame[3], frame[4], frame[5]];
        if smac[0] & 1 == 1 {
            return self.drop(DropReason::Malformed);
        }
        match net.macs.get(&smac) {
            // A MAC the control plane placed elsewhere: someone is impersonating it.
            Some(Location::Local(_)) => return self.drop(DropReason::SpoofedSourceMac),
            Some(Location::Remote(v)) if *v != src => {
                return self.drop(DropReason::SpoofedSourceMac)
            }
            Some(Location::Remote(_)) => {}
            None if net.is_static_peer(&src) => match self.learned.learn(vni, smac, src, now_ms) {
                fdb::Learn::New => self.counters.learned += 1,
                fdb::Learn::Known => {}
                fdb::Learn::Full => self.counters.drop(DropReason::LearnedFdbFull),
            },
            None => {}
        }
        if dst[0] & 1 == 1 {
            return self.flood(net, None, buf);
        }
        match net.macs.get(&dst) {
            Some(Location::Local(p)) => Action::Deliver(*p),
            _ => self.drop(DropReason::NoLocalDestination),
        }
    }
}

/// The MAC the agent answers with for `ip`, if it knows it: an endpoint or the
/// gateway of the same network. Never for the asker's own address, so duplicate
/// address detection keeps working.
fn answer_for(net: &NetworkView, asker: &PortView, ip: IpAddr) -> Option<Mac> {
    if asker.ips.contains(&ip) {
        return None;
    }
    net.neighbors.get(&ip).copied()
}

#[cfg(test)]
mod tests;
