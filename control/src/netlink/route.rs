//! Routes through an interface (added, replaced, deleted) and the policy
//! rules that pick a table by source address.

use super::{Netlink, NetlinkError};
use ipnet::IpNet;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::RuleAction;
use rtnetlink::packet_route::AddressFamily;
use std::net::IpAddr;

/// A route to `dst` out of interface `dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `0.0.0.0/0` or `::/0` for a default route.
    pub dst: IpNet,
    pub via: Option<IpAddr>,
    pub dev: String,
    /// `None`: the main table.
    pub table: Option<u32>,
    /// The route's MTU (`ip route ... mtu M`).
    pub mtu: Option<u32>,
}

impl Route {
    /// The default route of `via`'s family through `via` on `dev`.
    pub fn default_via(via: IpAddr, dev: &str) -> Route {
        let dst = match via {
            IpAddr::V4(_) => IpNet::V4(Default::default()),
            IpAddr::V6(_) => IpNet::V6(Default::default()),
        };
        Route {
            dst,
            via: Some(via),
            dev: dev.to_string(),
            table: None,
            mtu: None,
        }
    }

    fn message(&self, index: u32) -> RouteMessage {
        let mut m = RouteMessage::default();
        let h = &mut m.header;
        h.address_family = match self.dst {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        };
        h.destination_prefix_length = self.dst.prefix_len();
        // as iproute2 adds them ("proto boot", shown as nothing)
        h.protocol = RouteProtocol::Boot;
        h.scope = RouteScope::Universe;
        h.kind = RouteType::Unicast;
        h.table = match self.table {
            None => RouteHeader::RT_TABLE_MAIN,
            Some(t) => u8::try_from(t).unwrap_or(RouteHeader::RT_TABLE_UNSPEC),
        };
        let a = &mut m.attributes;
        if let Some(t) = self.table.filter(|t| *t > 255) {
            a.push(RouteAttribute::Table(t));
        }
        if self.dst.prefix_len() > 0 {
            a.push(RouteAttribute::Destination(RouteAddress::from(
                self.dst.network(),
            )));
        }
        if let Some(via) = self.via {
            a.push(RouteAttribute::Gateway(RouteAddress::from(via)));
        }
        a.push(RouteAttribute::Oif(index));
        if let Some(mtu) = self.mtu {
            a.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        m
    }
}

impl Netlink {
    /// Adds `r`; one already there (the same destination in the table) is
    /// [`NetlinkError::exists`] and stays as it was.
    pub async fn add_route(&self, r: &Route) -> Result<(), NetlinkError> {
        self.put_route(r, false).await
    }

    /// Adds `r`, or replaces the route to its destination in its table.
    pub async fn replace_route(&self, r: &Route) -> Result<(), NetlinkError> {
        self.put_route(r, true).await
    }

    async fn put_route(&self, r: &Route, replace: bool) -> Result<(), NetlinkError> {
        let index = self.require(&r.dev).await?.index;
        let verb = if replace { "replace" } else { "add" };
        let what = format!("{verb} route {r:?}{}", self.place());
        let mut req = self.handle.route().add(r.message(index));
        if replace {
            req = req.replace();
        }
        req.execute().await.map_err(|e| NetlinkError::of(what, e))
    }

    /// Deletes the route to `r.dst` through `r.dev` in `r`'s table, whatever
    /// its protocol, next hop or metrics.
    pub async fn del_route(&self, r: &Route) -> Result<(), NetlinkError> {
        let index = self.require(&r.dev).await?.index;
        let what = format!("delete route {r:?}{}", self.place());
        let mut m = Route {
            via: None,
            mtu: None,
            ..r.clone()
        }
        .message(index);
        // wildcards, as `ip route del` sends them
        m.header.protocol = RouteProtocol::Unspec;
        m.header.scope = RouteScope::NoWhere;
        m.header.kind = RouteType::Unspec;
        self.handle
            .route()
            .del(m)
            .execute()
            .await
            .map_err(|e| NetlinkError::of(what, e))
    }

    /// `ip rule add from ADDR table TABLE priority PRIORITY`: what is sent
    /// from `from` is routed by `table`. One already there is
    /// [`NetlinkError::exists`].
    pub async fn add_rule(
        &self,
        from: IpAddr,
        table: u32,
        priority: u32,
    ) -> Result<(), NetlinkError> {
        let what = format!("add rule from {from} table {table}{}", self.place());
        let req = self
            .handle
            .rule()
            .add()
            .table_id(table)
            .priority(priority)
            .action(RuleAction::ToTable);
        let r = match from {
            IpAddr::V4(a) => req.v4().source_prefix(a, 32).execute().await,
            IpAddr::V6(a) => req.v6().source_prefix(a, 128).execute().await,
        };
        r.map_err(|e| NetlinkError::of(what, e))
    }
}
