//! VXLAN datagrams from other nodes (plain, or out of the tunnel): header,
//! VNI and membership checks, learning from static peers, delivery.

use super::*;

impl Switch {
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
        if vni == crate::wire::probe::PROBE_VNI {
            return self.probe(st, src, buf, now_ms, secure);
        }
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
        net.traffic.rx(self.lane, 1, buf.len() as u64);
        self.trace(vni, buf);
        let frame = buf.data();
        if frame.len() < ETH_HDR {
            return self.drop(DropReason::Malformed);
        }
        let smac: Mac = crate::mac_at(frame, 6);
        let dst: Mac = crate::mac_at(frame, 0);
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
            return self.flood(net, None, buf, now_ms);
        }
        if let Some(ing) = st.ingress.as_ref().filter(|i| i.vni == vni) {
            if dst == ing.sandbox_mac {
                return self.sandbox_out(ing, buf, now_ms);
            }
            if matches!(net.macs.get(&dst), Some(Location::Local(_))) {
                self.note_ingress_return(ing, buf, now_ms);
            }
        }
        match net.macs.get(&dst) {
            Some(Location::Local(p)) => {
                let p = *p;
                self.unbalance(net, buf, now_ms);
                Action::Deliver(p)
            }
            _ => self.drop(DropReason::NoLocalDestination),
        }
    }
}
