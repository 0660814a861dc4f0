//! The load balancer's per-packet work: a client's packet to a VIP DNATed to
//! the backend its connection has (or a new one picks), a backend's reply
//! translated back, and ICMP errors about balanced connections made to read
//! as the VIP's. Established connections are served from the worker's flow
//! cache; the shared connection table is locked only on a miss.

use super::*;

impl Switch {
    /// Picks a backend of virtual service `mark` on `net` for a new connection.
    /// `host_only`: only tasks on this node (`mode=host`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pick_backend(
        schedulers: &mut FxHashMap<(u32, u32), Scheduler>,
        view: &mut Vec<scheduler::Backend>,
        ct: &Conntrack,
        net: &NetworkView,
        mark: u32,
        host_only: bool,
        src: IpAddr,
        flow: u64,
        now_ms: u64,
    ) -> Result<(u32, IpAddr), DropReason> {
        let svc = net.services.get(&mark).ok_or(DropReason::NoBackend)?;
        let lc = svc.scheduler == scheduler::Kind::Lc;
        view.clear();
        view.extend(svc.backends.iter().enumerate().map(|(i, b)| {
            // a task without an address of the client's family cannot serve it
            let addr = b.addr_for(&src);
            scheduler::Backend {
                weight: b.weight,
                // only lc looks at the load; counting walks the table
                active: if lc {
                    ct.counts(net.vni, mark, i as u32).0
                } else {
                    0
                },
                healthy: b.healthy
                    && (b.local || !host_only)
                    && addr.is_some_and(|a| !ct.passive.is_out((net.vni, mark, a), now_ms)),
            }
        }));
        let sched = schedulers
            .get_mut(&(net.vni, mark))
            .ok_or(DropReason::NoBackend)?;
        let i = sched
            .pick(view, flow, addr_bits(src))
            .ok_or(DropReason::NoBackend)?;
        let b = svc.backends.get(i).ok_or(DropReason::NoBackend)?;
        let ip = b.addr_for(&src).ok_or(DropReason::NoBackend)?;
        Ok((i as u32, ip))
    }

    /// The backend (address, port, MAC) of a client's packet: its connection's,
    /// or for a new connection (once `admit` lets it in) one picked from the
    /// service `admit` names (whose tasks listen on its `target` port) and
    /// tracked from now on, all under one lock. A connection stuck on a backend
    /// passive health took out is picked anew. An established connection's
    /// packets are served from this worker's cache, without the lock.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn track_orig(
        &mut self,
        net: &NetworkView,
        key: Key,
        seg: Seg,
        len: Wire,
        admit: impl FnOnce() -> Result<Admitted, DropReason>,
        now_ms: u64,
    ) -> Result<Hit, DropReason> {
        if let Some(h) = self
            .flows
            .hit(&key, Dir::Orig, seg.flags, seg.seq_end, now_ms)
        {
            let h = *h;
            if self.flow_log.is_some() {
                self.flows.count(h.id, Dir::Orig, len);
            }
            return Ok(h);
        }
        // borrowed apart, so the table is locked without cloning its Arc per packet
        let Self {
            conntrack,
            schedulers,
            view,
            flow_log,
            counters,
            ..
        } = self;
        let mut ct = crate::conntrack::lock_counted(conntrack);
        let tracked = match ct.lookup(&key) {
            Some((id, Dir::Orig)) if ct.stalled(id, now_ms) => {
                ct.retire(id);
                None
            }
            Some((id, Dir::Orig)) => Some(id),
            _ => None,
        };
        let id = match tracked {
            Some(id) => id,
            None => {
                let Admitted { p, policy, verdict } = admit()?;
                let (i, ip) = Self::pick_backend(
                    schedulers,
                    view,
                    &ct,
                    net,
                    p.fwmark,
                    p.host_only,
                    key.src,
                    key.flow_hash(),
                    now_ms,
                )?;
                let reply = Key {
                    src: ip,
                    dst: key.src,
                    sport: p.target,
                    dport: key.sport,
                    ..key
                };
                if matches!(verdict, Verdict::AuditDrop | Verdict::AuditReject) {
                    counters.policy_audited += 1;
                }
                let id = ct.insert(key, reply, p.fwmark, i, seg.flags, now_ms);
                if let Some(l) = flow_log.as_mut() {
                    let open = FlowEvent {
                        kind: Kind::Open,
                        at_ms: now_ms,
                        key,
                        nat: Some((ip, p.target)),
                        service: p.fwmark,
                        policy,
                        verdict,
                        ..Default::default()
                    };
                    l.connection(open, counters);
                }
                id
            }
        };
        if flow_log.is_some() {
            ct.count(id, Dir::Orig, len);
        }
        ct.update(id, Dir::Orig, seg.flags, now_ms);
        if key.proto == 6 {
            ct.note_seq(id, Dir::Orig, seg.seq_end);
        }
        let (ip, port, _) = ct.translation(id, Dir::Orig).ok_or(DropReason::NoBackend)?;
        let gen = ct.cacheable(id, Dir::Orig);
        take_ends(&mut ct, flow_log, counters);
        drop(ct);
        let mac = *net.neighbors.get(&ip).ok_or(DropReason::NoBackend)?;
        let hit = Hit {
            mac,
            at: net.macs.get(&mac).copied(),
            ..Hit::new(id, Dir::Orig, ip, port)
        };
        Ok(self.flows.keep(key, gen, hit))
    }

    /// DNATs a new or tracked connection to a VIP to its backend (the client's
    /// node balances; no SNAT).
    #[inline(always)]
    pub(super) fn balance(
        &mut self,
        net: &NetworkView,
        buf: &mut PacketBuf,
        now_ms: u64,
        tuple: Option<(Key, Seg)>,
    ) -> Result<Option<Location>, DropReason> {
        // no 5-tuple: to a VIP, say why; elsewhere (no_route) it may be egress's
        let Some((key, seg)) = tuple else {
            return Err(untracked_reason(buf.data(), |d| net.vips.contains_key(d)));
        };
        let mark = *net.vips.get(&key.dst).ok_or(DropReason::NoRoute)?;
        let service = Admitted {
            p: PublishedView {
                fwmark: mark,
                target: key.dport,
                host_only: false,
            },
            policy: 0,
            verdict: Verdict::None,
        };
        let len = ip_len(buf);
        let to = self.track_orig(net, key, seg, len, || Ok(service), now_ms)?;
        if !nat::rewrite(buf.data_mut(), Side::Dst, to.ip, key.dport) {
            return Err(DropReason::Malformed);
        }
        buf.data_mut()[0..6].copy_from_slice(&to.mac);
        Ok(to.at)
    }

    /// A reply of a balanced connection, about to be delivered to its client:
    /// rewrites its source back to the VIP (and the gateway MAC the client sent to).
    pub(super) fn unbalance(&mut self, net: &NetworkView, buf: &mut PacketBuf, now_ms: u64) {
        // replies (and ICMP errors) come from a backend: look at the source
        // address before parsing anything else, which most frames then skip
        if net.backend_ips.is_empty() {
            return;
        }
        let f = buf.data();
        let src = if f.len() >= ETH_HDR + 20 && f[12..14] == ETHERTYPE_IPV4 {
            IpAddr::V4(Ipv4Addr::new(f[26], f[27], f[28], f[29]))
        } else if f.len() >= ETH_HDR + 40 && f[12..14] == ETHERTYPE_IPV6 {
            let mut b = [0u8; 16];
            b.copy_from_slice(&f[22..38]);
            IpAddr::V6(b.into())
        } else {
            return;
        };
        if !net.backend_ips.contains(&src) {
            return;
        }
        let Some((key, seg)) = five_tuple(buf.data(), net.vni) else {
            self.unbalance_icmp_error(net, buf);
            return;
        };
        let Some(to) = self.track_reply(key, seg, ip_len(buf), now_ms) else {
            return;
        };
        if nat::rewrite(buf.data_mut(), Side::Src, to.ip, to.port) {
            buf.data_mut()[6..12].copy_from_slice(&net.gateway_mac);
        }
    }

    /// A backend's packet of a tracked connection: the address and port it
    /// answers for (the VIP's, or the ingress sandbox's), and for a connection
    /// that came in through another node's ingress, that node's sandbox MAC
    /// (`via`). Served from this worker's cache once the connection is steady.
    /// (The cached path is inlined into each caller, so the key never goes
    /// through memory; the table's path is not.)
    #[inline(always)]
    pub(super) fn track_reply(
        &mut self,
        key: Key,
        seg: Seg,
        len: Wire,
        now_ms: u64,
    ) -> Option<Hit> {
        if let Some(h) = self
            .flows
            .hit(&key, Dir::Reply, seg.flags, seg.seq_end, now_ms)
        {
            let h = *h;
            if self.flow_log.is_some() {
                self.flows.count(h.id, Dir::Reply, len);
            }
            return Some(h);
        }
        self.track_reply_in_table(key, seg, len, now_ms)
    }

    #[inline(never)]
    pub(super) fn track_reply_in_table(
        &mut self,
        key: Key,
        seg: Seg,
        len: Wire,
        now_ms: u64,
    ) -> Option<Hit> {
        let Self {
            conntrack,
            flow_log,
            counters,
            ..
        } = self;
        let mut ct = crate::conntrack::lock_counted(conntrack);
        let Some((id, Dir::Reply)) = ct.lookup(&key) else {
            return None;
        };
        if flow_log.is_some() {
            ct.count(id, Dir::Reply, len);
        }
        ct.update(id, Dir::Reply, seg.flags, now_ms);
        if key.proto == 6 {
            ct.note_seq(id, Dir::Reply, seg.seq_end);
        }
        let (ip, port, via) = ct.translation(id, Dir::Reply)?;
        let gen = ct.cacheable(id, Dir::Reply);
        take_ends(&mut ct, flow_log, counters);
        drop(ct);
        let hit = Hit {
            via,
            ..Hit::new(id, Dir::Reply, ip, port)
        };
        Some(self.flows.keep(key, gen, hit))
    }

    /// An ICMP error a backend sent about a balanced connection (e.g. port
    /// unreachable for UDP): made to read as coming from the VIP about the
    /// packet the client sent, so the client's socket sees it.
    pub(super) fn unbalance_icmp_error(&mut self, net: &NetworkView, buf: &mut PacketBuf) {
        let quoted = match nat::icmp_error_quote(buf.data()) {
            Some((proto, src, dst, sport, dport)) => (proto, src.into(), dst.into(), sport, dport),
            None => match nat::icmp6_error_quote(buf.data()) {
                Some((proto, src, dst, sport, dport)) => {
                    (proto, src.into(), dst.into(), sport, dport)
                }
                None => return,
            },
        };
        let (proto, src, dst, sport, dport): (u8, IpAddr, IpAddr, u16, u16) = quoted;
        if !net.backend_ips.contains(&dst) {
            return;
        }
        let reply = Key {
            zone: net.vni,
            proto,
            src: dst,
            dst: src,
            sport: dport,
            dport: sport,
        };
        let orig = {
            let ct = self.lock_conntrack();
            match ct.lookup(&reply) {
                Some((id, Dir::Reply)) => ct.translation(id, Dir::Reply),
                _ => None,
            }
        };
        let rewritten = match orig {
            Some((IpAddr::V4(vip), port, _)) => {
                nat::rewrite_icmp_error(buf.data_mut(), vip, vip, port)
            }
            Some((IpAddr::V6(vip), port, _)) => {
                nat::rewrite_icmp6_error(buf.data_mut(), vip, vip, port)
            }
            None => false,
        };
        if rewritten {
            buf.data_mut()[6..12].copy_from_slice(&net.gateway_mac);
        }
    }

    pub(super) fn lock_conntrack(&self) -> std::sync::MutexGuard<'_, Conntrack> {
        crate::conntrack::lock_counted(&self.conntrack)
    }
}
