//! Frames from local ports: source checks, neighbour answers, the embedded
//! DNS, the MTU, then lookup and output (deliver, encapsulate, flood).

use super::*;

impl Switch {
    /// A DNS query to a gateway address: answered in place from the network's
    /// names. `None`: not a DNS query for the gateway.
    pub(super) fn dns<'s>(
        &mut self,
        net: &NetworkView,
        port: PortId,
        buf: &mut PacketBuf,
        forward: bool,
        key: Key,
    ) -> Option<Action<'s>> {
        if key.proto != 17 || key.dport != 53 || !net.gateways.contains(&key.dst) {
            return None;
        }
        let f = buf.data();
        let payload_off = match key.dst {
            IpAddr::V4(_) => {
                ETH_HDR + crate::wire::ipv4::Packet::new_unchecked(&f[ETH_HDR..]).header_len() + 8
            }
            IpAddr::V6(_) => ETH_HDR + 40 + 8,
        };
        let client: Mac = crate::mac_at(f, 6);
        let peer = udp_reply::UdpPeer {
            client_mac: client,
            client_ip: key.src,
            client_port: key.sport,
            gateway_mac: net.gateway_mac,
            gateway_ip: key.dst,
            gateway_port: 53,
        };
        if forward && dns::is_unknown(f.get(payload_off..)?, |n| net.dns.contains_key(n)) {
            return Some(Action::ForwardDns {
                port,
                peer,
                payload_off,
            });
        }
        let rotate = self.dns_rotate;
        let Some((resp, records)) =
            dns::answer(f.get(payload_off..)?, rotate, |n| net.dns.get(n).cloned())
        else {
            return Some(self.drop(DropReason::Malformed));
        };
        if records > 0 {
            self.dns_rotate = self.dns_rotate.wrapping_add(1);
        }
        let Some(total) = udp_reply::write(buf.frame_room(), &peer, &resp) else {
            return Some(self.drop(DropReason::TooBig));
        };
        buf.set_len(total);
        self.counters.dns_answers += 1;
        Some(Action::Reply(port))
    }

    /// A frame an endpoint (or the ingress sandbox) sent on its port. A drop
    /// is recorded in the flow log, when it is on, with the frame's 5-tuple.
    #[inline]
    pub fn from_port<'s>(
        &mut self,
        st: &'s SwitchState,
        port: PortId,
        buf: &mut PacketBuf,
        now_ms: u64,
    ) -> Action<'s> {
        let a = self.switch_port(st, port, buf, now_ms);
        if let (Action::Drop(r), Some(_)) = (a, &self.flow_log) {
            self.log_port_drop(st, port, buf, r, now_ms);
        }
        a
    }

    /// Records a drop of a frame from `port` (whose network is its zone).
    #[cold]
    pub(super) fn log_port_drop(
        &mut self,
        st: &SwitchState,
        port: PortId,
        buf: &PacketBuf,
        r: DropReason,
        now_ms: u64,
    ) {
        match st.ingress.as_ref().filter(|i| i.port == port) {
            Some(ing) => self.log_drop(ing.vni, Some(ing), buf.data(), r, now_ms),
            None => {
                if let Some(pv) = st.ports.get(&port) {
                    self.log_drop(pv.vni, None, buf.data(), r, now_ms);
                }
            }
        }
    }

    /// Records a drop of `frame` on network `zone` in the flow log (when on),
    /// if it has a 5-tuple; at ingress (`ing`), with the policy that refused it.
    #[cold]
    pub(super) fn log_drop(
        &mut self,
        zone: u32,
        ing: Option<&IngressView>,
        frame: &[u8],
        r: DropReason,
        now_ms: u64,
    ) {
        let Some(log) = self.flow_log.as_mut() else {
            return;
        };
        let Some((key, _)) = five_tuple(frame, zone) else {
            return;
        };
        let (policy, verdict) = match (r, ing) {
            (DropReason::PolicyDrop | DropReason::PolicyReject, Some(ing)) => {
                let v = policy_verdict(&ing.policies, key.proto, key.dport, key.src);
                let verdict = match v.action {
                    PolicyAction::Drop => Verdict::Drop,
                    PolicyAction::Reject => Verdict::Reject,
                    PolicyAction::Accept => Verdict::Accept,
                };
                (v.rule, verdict)
            }
            _ => (0, Verdict::None),
        };
        let e = FlowEvent {
            kind: Kind::Drop(r),
            at_ms: now_ms,
            key,
            policy,
            verdict,
            packets: [1, 0],
            bytes: [frame.len().saturating_sub(ETH_HDR) as u64, 0],
            ..Default::default()
        };
        log.dropped(e, now_ms, &mut self.counters);
    }

    pub(super) fn switch_port<'s>(
        &mut self,
        st: &'s SwitchState,
        port: PortId,
        buf: &mut PacketBuf,
        now_ms: u64,
    ) -> Action<'s> {
        self.counters.port_rx += 1;
        if let Some(ing) = st.ingress.as_ref().filter(|i| i.port == port) {
            self.trace(ing.vni, buf);
            return self.sandbox_in(st, ing, buf, now_ms);
        }
        if let Some(eg) = st.egress.as_ref().filter(|e| e.port == port) {
            return self.egress_in(eg, buf);
        }
        let Some(pv) = st.ports.get(&port) else {
            return self.drop(DropReason::UnknownPort);
        };
        self.trace(pv.vni, buf);
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
                        return self.answer_arp(buf, &arp, mac, port);
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
                // neighbour discovery may only speak for this port's own
                // addresses, wherever in the header chain it sits
                if let Err(r) = neighbor::nd_check(frame, &pv.mac, &pv.ips) {
                    return self.drop(r);
                }
                if let Some(ns) = neighbor::parse_solicitation(frame) {
                    if let Some(mac) = answer_for(net, pv, IpAddr::V6(ns.target)) {
                        if let Some(a) = self.answer_solicitation(buf, &ns, mac, port) {
                            return a;
                        }
                    }
                }
            }
            // Anything else (VLAN tags, raw L2 protocols) could carry addresses the
            // checks above never see.
            _ => return self.drop(DropReason::UnsupportedEtherType),
        }
        if net.mtu > 0 && buf.wire_frame_max() > usize::from(net.mtu) + ETH_HDR {
            return self.too_big(net, port, buf);
        }
        let frame = buf.data();
        let dst: Mac = crate::mac_at(frame, 0);
        if dst[0] & 1 == 1 {
            return self.flood(net, Some(port), buf, now_ms);
        }
        if dst == net.gateway_mac {
            // parsed once for both: a DNS query to the gateway, or a VIP
            let tuple = five_tuple(buf.data(), net.vni);
            if let Some((key, _)) = tuple {
                let forward = !net.internal && !st.dns_upstream.is_empty();
                if let Some(a) = self.dns(net, port, buf, forward, key) {
                    return a;
                }
            }
            if let Some(ing) = st.ingress.as_ref().filter(|i| i.vni == net.vni) {
                return self.ingress_reply(ing, net, buf, now_ms);
            }
            // to the gateway: a service VIP (balanced here, on the client's node)
            // or, outside every overlay, something to route (egress, through
            // this node; asked only once it is no VIP, so VIPs pay nothing for it)
            // a client's frame, just balanced: never a reply to rewrite back
            return match self.balance(net, buf, now_ms, tuple) {
                Ok(at) => self.send_to(net, at, buf),
                Err(DropReason::NoRoute) => self.egress_or_no_route(st, net, buf),
                Err(r) => self.drop(r),
            };
        }
        let vtep = match net.macs.get(&dst) {
            Some(Location::Local(p)) if *p == port => {
                return self.drop(DropReason::NoLocalDestination)
            }
            Some(Location::Local(p)) => {
                let p = *p;
                self.unbalance(net, buf, now_ms);
                return Action::Deliver(p);
            }
            Some(Location::Remote(v)) => Some(*v),
            None => self.learned.lookup(net.vni, &dst, now_ms),
        };
        match vtep {
            Some(vtep) => self.encap(net, vtep, buf),
            None => self.flood(net, Some(port), buf, now_ms),
        }
    }

    /// Answers an oversized packet with ICMP "fragmentation needed" / "packet too
    /// big" from the gateway, so the sender lowers its path MTU.
    pub(super) fn too_big<'s>(
        &mut self,
        net: &NetworkView,
        port: PortId,
        buf: &mut PacketBuf,
    ) -> Action<'s> {
        let len = buf.len();
        let is_v6 = buf.data()[12..14] == ETHERTYPE_IPV6;
        let gw = net.gateways.iter().find(|g| g.is_ipv6() == is_v6).copied();
        let n = match gw {
            Some(IpAddr::V4(g)) => {
                icmp_error::write_v4(buf.frame_room(), len, net.gateway_mac, g, net.mtu)
            }
            Some(IpAddr::V6(g)) => {
                icmp_error::write_v6(buf.frame_room(), len, net.gateway_mac, g, net.mtu)
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

    pub(super) fn flood<'s>(
        &mut self,
        net: &'s NetworkView,
        skip: Option<PortId>,
        buf: &mut PacketBuf,
        now_ms: u64,
    ) -> Action<'s> {
        // a port's frames spend its own budget (frames from the underlay were
        // counted against their port on the node they came from)
        if let (Some(b), Some(p)) = (&mut self.flood_budget, skip) {
            if !b.admit(p, now_ms) {
                return self.drop(DropReason::FloodLimited);
            }
        }
        self.counters.flooded += 1;
        let flow_hash = flow_hash(buf.data());
        // Frames from the underlay are never sent back to it (split horizon).
        let vteps: &[IpAddr] = if skip.is_some() { &net.members } else { &[] };
        if !vteps.is_empty() {
            let (frames, bytes) = (buf.wire_frames(), buf.wire_bytes());
            if !buf.write_vxlan_header(net.vni) {
                return self.drop(DropReason::TooBig);
            }
            let n = vteps.len() as u64;
            net.traffic.tx(self.lane, n * frames, n * bytes);
        }
        Action::Flood {
            ports: &net.local_ports,
            skip,
            vteps,
            flow_hash,
            secure: net.encrypted,
        }
    }

    /// Sends a frame to where its destination MAC is (`None`: nowhere known).
    pub(super) fn send_to<'s>(
        &mut self,
        net: &NetworkView,
        at: Option<Location>,
        buf: &mut PacketBuf,
    ) -> Action<'s> {
        match at {
            Some(Location::Local(p)) => Action::Deliver(p),
            Some(Location::Remote(v)) => self.encap(net, v, buf),
            None => self.drop(DropReason::NoBackend),
        }
    }

    /// Puts the frame in a VXLAN header for `vtep`, counted as out on `net`.
    #[inline(always)]
    pub(super) fn encap<'s>(
        &mut self,
        net: &NetworkView,
        vtep: IpAddr,
        buf: &mut PacketBuf,
    ) -> Action<'s> {
        let flow_hash = flow_hash(buf.data());
        // a super-frame counts as the segments it leaves as
        let (frames, bytes) = (buf.wire_frames(), buf.wire_bytes());
        if !buf.write_vxlan_header(net.vni) {
            return self.drop(DropReason::TooBig);
        }
        net.traffic.tx(self.lane, frames, bytes);
        Action::Encap {
            vtep,
            flow_hash,
            secure: net.encrypted,
        }
    }
}
