//! The routing mesh (ingress): connections from outside through the node's
//! sandbox to a published port, admitted by policy and balanced to a task;
//! the task's replies back through the ingress node they came in by.

use super::*;

impl Switch {
    /// A frame the kernel wrote to the ingress sandbox: ARP for the sandbox
    /// address, or a connection to a published port (already DNATed by the node's
    /// nftables table, so its source is still the real client). New connections
    /// pass this node's policy, get a task, and go to it on the ingress network
    /// with the client's address kept.
    pub(super) fn sandbox_in<'s>(
        &mut self,
        st: &'s SwitchState,
        ing: &'s IngressView,
        buf: &mut PacketBuf,
        now_ms: u64,
    ) -> Action<'s> {
        let frame = buf.data();
        if frame.len() < ETH_HDR {
            return self.drop(DropReason::Malformed);
        }
        match [frame[12], frame[13]] {
            ETHERTYPE_ARP => {
                return match neighbor::parse_arp(frame) {
                    Some(arp) if arp.is_request && arp.target_ip == ing.sandbox_ip => {
                        self.answer_arp(buf, &arp, ing.sandbox_mac, ing.port)
                    }
                    Some(_) => self.drop(DropReason::NoRoute),
                    None => self.drop(DropReason::Malformed),
                }
            }
            ETHERTYPE_IPV4 => {}
            ETHERTYPE_IPV6 => {
                // the kernel resolving the IPv6 sandbox address
                if let Some(ns) = neighbor::parse_solicitation(frame) {
                    if Some(ns.target) != ing.sandbox_ip6 {
                        return self.drop(DropReason::NoRoute);
                    }
                    return self
                        .answer_solicitation(buf, &ns, ing.sandbox_mac, ing.port)
                        .unwrap_or_else(|| self.drop(DropReason::Malformed));
                }
            }
            _ => return self.drop(DropReason::UnsupportedEtherType),
        }
        let Some(net) = st.networks.get(&ing.vni) else {
            return self.drop(DropReason::UnknownVni);
        };
        let to_sandbox = |d: &IpAddr| match d {
            IpAddr::V4(a) => *a == ing.sandbox_ip,
            IpAddr::V6(a) => Some(*a) == ing.sandbox_ip6,
        };
        // the kernel's own IPv6 multicast (MLD behind a hop-by-hop header) is
        // no published port's business: no_route, not an extension header
        let Some((key, seg)) = five_tuple(frame, ing.vni) else {
            let why = untracked_reason(frame, to_sandbox);
            return self.drop(why);
        };
        if !to_sandbox(&key.dst) {
            return self.drop(DropReason::NoRoute);
        }
        // only a new connection is admitted: published here, ingress on (host-mode
        // ports are this node's own and stay), and this node's policy
        let admit = || {
            let p = *ing
                .published
                .get(&(key.proto, key.dport))
                .ok_or(DropReason::NotPublished)?;
            if !ing.enabled && !p.host_only {
                return Err(DropReason::IngressOff);
            }
            let v = policy_verdict(&ing.policies, key.proto, key.dport, key.src);
            match v.action {
                PolicyAction::Accept => {}
                PolicyAction::Drop => return Err(DropReason::PolicyDrop),
                PolicyAction::Reject => return Err(DropReason::PolicyReject),
            }
            // last, so only connections that would be served spend a token;
            // over the limit is dropped unanswered (a RST would answer spoofers)
            match &ing.rate_limit {
                Some(l) if !l.admit(key.src, now_ms) => Err(DropReason::IngressRateLimited),
                _ => Ok(Admitted::by_policy(p, v)),
            }
        };
        let len = ip_len(buf);
        let Hit {
            ip, port, mac, at, ..
        } = match self.track_orig(net, key, seg, len, admit, now_ms) {
            Ok(t) => t,
            // a port just unpublished or a node just closed is refused as the
            // closed port the kernel's table is about to make it, not left to
            // time out
            Err(
                r @ (DropReason::NotPublished | DropReason::IngressOff | DropReason::PolicyReject),
            ) => {
                // the refusal is written over the frame: recorded first
                self.log_drop(ing.vni, Some(ing), buf.data(), r, now_ms);
                return self.reject(ing, buf, r);
            }
            Err(r) => return self.drop(r),
        };
        if !nat::rewrite(buf.data_mut(), Side::Dst, ip, port) {
            return self.drop(DropReason::Malformed);
        }
        let f = buf.data_mut();
        f[0..6].copy_from_slice(&mac);
        f[6..12].copy_from_slice(&ing.sandbox_mac);
        self.send_to(net, at, buf)
    }

    /// Sends a frame already addressed to `mac` on `net`: to its local port, or
    /// over VXLAN to its node.
    pub(super) fn send_to_mac<'s>(
        &mut self,
        net: &NetworkView,
        mac: Mac,
        buf: &mut PacketBuf,
    ) -> Action<'s> {
        self.send_to(net, net.macs.get(&mac).copied(), buf)
    }

    /// Refuses a new ingress connection as a closed port would: RST for TCP,
    /// ICMP port unreachable for UDP, back through the sandbox to the client.
    pub(super) fn reject<'s>(
        &mut self,
        ing: &IngressView,
        buf: &mut PacketBuf,
        why: DropReason,
    ) -> Action<'s> {
        let len = buf.len();
        let f = buf.data();
        let v6 = f.get(12..14) == Some(&ETHERTYPE_IPV6[..]);
        let tcp = if v6 {
            f.get(ETH_HDR + 6) == Some(&6)
        } else {
            f.get(ETH_HDR + 9) == Some(&6)
        };
        let n = match (tcp, v6.then_some(ing.sandbox_ip6).flatten()) {
            (true, _) => tcp_rst::write_refusal(buf.frame_room(), len, ing.sandbox_mac),
            (false, Some(ip6)) => {
                icmp_error::write_v6_port_unreachable(buf.frame_room(), len, ing.sandbox_mac, ip6)
            }
            (false, None) if !v6 => icmp_error::write_v4_port_unreachable(
                buf.frame_room(),
                len,
                ing.sandbox_mac,
                ing.sandbox_ip,
            ),
            (false, None) => None,
        };
        match n {
            Some(n) if buf.set_len(n) => {
                self.counters.drop(why);
                Action::Reply(ing.port)
            }
            _ => self.drop(why),
        }
    }

    /// A task's reply to a client that came in through ingress, sent to the
    /// ingress network's gateway: back to the ingress node it came through (its
    /// sandbox on this node, or another node's over VXLAN).
    pub(super) fn ingress_reply<'s>(
        &mut self,
        ing: &'s IngressView,
        net: &NetworkView,
        buf: &mut PacketBuf,
        now_ms: u64,
    ) -> Action<'s> {
        let Some((key, seg)) = five_tuple(buf.data(), net.vni) else {
            return self.drop(DropReason::NoRoute);
        };
        let Some(to) = self.track_reply(key, seg, ip_len(buf), now_ms) else {
            return self.drop(DropReason::NoRoute);
        };
        match to.via {
            Some(mac) => {
                buf.data_mut()[0..6].copy_from_slice(&mac);
                self.send_to_mac(net, mac, buf)
            }
            // balanced here: the client came in through this node's own sandbox
            None => self.send_to_sandbox(ing, buf, &to),
        }
    }

    /// A task's reply reaching the ingress node that balanced its connection:
    /// reverse-NATed to the sandbox address and published port, and written to
    /// the sandbox for the kernel to un-DNAT and route to the client.
    pub(super) fn sandbox_out<'s>(
        &mut self,
        ing: &'s IngressView,
        buf: &mut PacketBuf,
        now_ms: u64,
    ) -> Action<'s> {
        let Some((key, seg)) = five_tuple(buf.data(), ing.vni) else {
            return self.drop(DropReason::NoRoute);
        };
        match self.track_reply(key, seg, ip_len(buf), now_ms) {
            Some(to) => self.send_to_sandbox(ing, buf, &to),
            None => self.drop(DropReason::NoRoute),
        }
    }

    /// Writes a reply, translated back to the sandbox address and published
    /// port, to the sandbox.
    pub(super) fn send_to_sandbox<'s>(
        &mut self,
        ing: &'s IngressView,
        buf: &mut PacketBuf,
        to: &Hit,
    ) -> Action<'s> {
        if !nat::rewrite(buf.data_mut(), Side::Src, to.ip, to.port) {
            return self.drop(DropReason::Malformed);
        }
        let f = buf.data_mut();
        f[0..6].copy_from_slice(&ing.host_mac);
        f[6..12].copy_from_slice(&ing.sandbox_mac);
        Action::Deliver(ing.port)
    }

    /// On a task's node: a connection arriving from another node's ingress with
    /// the client's address. Remembers that node, so the task's replies (which
    /// go to the ingress gateway) are sent back there rather than anywhere else.
    pub(super) fn note_ingress_return(&mut self, ing: &IngressView, buf: &PacketBuf, now_ms: u64) {
        let f = buf.data();
        let smac: Mac = crate::mac_at(f, 6);
        if smac == ing.sandbox_mac || !ing.sandbox_macs.contains(&smac) {
            return;
        }
        let Some((key, seg)) = five_tuple(f, ing.vni) else {
            return;
        };
        let cached = self
            .flows
            .hit(&key, Dir::Orig, seg.flags, seg.seq_end, now_ms);
        // the client may come back through another node after a failover
        if cached.is_some_and(|h| h.via == Some(smac)) {
            return;
        }
        let mut ct = crate::conntrack::lock_counted(&self.conntrack);
        // a bare SYN starts a new connection, even on a tuple seen before
        let fresh = key.proto == 6 && seg.flags & 0x12 == 0x02;
        let id = match ct.lookup(&key) {
            Some((id, Dir::Orig)) if !fresh => id,
            // a packet to its own address and port (a LAND attack) has one key
            // for both directions: no connection (found by fuzzing); checked
            // only for a new one
            _ if !Conntrack::trackable(&key, &key.reversed()) => return,
            _ => ct.insert(key, key.reversed(), 0, 0, seg.flags, now_ms),
        };
        ct.set_via(id, smac);
        ct.update(id, Dir::Orig, seg.flags, now_ms);
        if key.proto == 6 {
            ct.note_seq(id, Dir::Orig, seg.seq_end);
        }
        let gen = ct.cacheable(id, Dir::Orig);
        // its insert may have ended another connection (evicted, replaced)
        take_ends(&mut ct, &mut self.flow_log, &mut self.counters);
        drop(ct);
        let hit = Hit {
            via: Some(smac),
            ..Hit::new(id, Dir::Orig, key.dst, key.dport)
        };
        self.flows.keep(key, gen, hit);
    }
}
