//! Docker's IPAM driver calls: pools are vxmesh networks' subnets, and an
//! address is reserved in the store as an endpoint waiting for its sandbox,
//! so two nodes never hand out the same one.

use super::protocol::{self, PluginError};
use super::{addr_of, network_by_subnet, pool_of, refused, Driver, RESERVED, SETTLE};
use crate::state::model::DOCKER_PENDING;
use crate::state::{ipam, ops, NetworkSpec};
use ipnet::IpNet;
use std::time::{Duration, Instant};

impl Driver {
    pub(super) async fn request_pool(
        &self,
        r: &protocol::RequestPool,
    ) -> Result<IpNet, PluginError> {
        if r.v6 {
            return Err(refused(
                "vxmesh's IPAM gives Docker IPv4 pools only: create the network without --ipv6",
            ));
        }
        if !r.sub_pool.is_empty() && r.sub_pool != r.pool {
            return Err(refused(
                "vxmesh hands out addresses from the whole subnet: drop --ip-range",
            ));
        }
        let st = self.state().await?;
        let used: Vec<IpNet> = st
            .networks
            .values()
            .flat_map(|n| n.subnets.clone())
            .collect();
        if r.pool.is_empty() {
            return ipam::allocate_subnet(&used)
                .ok_or_else(|| refused("no free subnet left: pass --subnet"));
        }
        let pool: IpNet = r
            .pool
            .parse()
            .map_err(|_| refused(format!("--subnet {:?} is not a CIDR", r.pool)))?;
        if !matches!(pool, IpNet::V4(_)) || pool.trunc() != pool {
            return Err(refused(format!(
                "--subnet {pool}: give an IPv4 network address, e.g. {}",
                pool.trunc()
            )));
        }
        if network_by_subnet(&st, &pool).is_some() {
            return Ok(pool); // joins the vxmesh network that has it
        }
        // everything vxmesh checks of a new subnet (overlap, size), by the one
        // function that makes networks, on a copy: Docker learns of a refusal now,
        // not after it has made its network
        let probe = NetworkSpec {
            name: "docker-pool-check".into(),
            subnets: vec![pool],
            ..Default::default()
        };
        ops::create_network(&mut st.clone(), &probe).map_err(refused)?;
        Ok(pool)
    }

    /// The network whose subnet is `pool`, once the CreateNetwork that makes it
    /// has been resolved to a name.
    pub(super) async fn network_for(&self, pool: &IpNet) -> Result<String, PluginError> {
        let end = Instant::now() + SETTLE;
        loop {
            if let Some(n) = network_by_subnet(&self.state().await?, pool) {
                return Ok(n);
            }
            if Instant::now() >= end {
                return Err(refused(format!(
                    "no vxmesh network has subnet {pool}: create it with docker network create -d vxmesh --ipam-driver vxmesh --subnet {pool} NAME"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(super) async fn request_address(
        &self,
        r: &protocol::RequestAddress,
    ) -> Result<String, PluginError> {
        let pool = pool_of(&r.pool_id)?;
        let len = pool.prefix_len();
        let gateway = ipam::gateway(&pool);
        let wants_gateway = r
            .options
            .as_ref()
            .and_then(|o| o.get("RequestAddressType"))
            .is_some_and(|t| t == "com.docker.network.gateway");
        if wants_gateway {
            if !r.address.is_empty() && addr_of(&r.address)? != gateway {
                return Err(refused(format!(
                    "vxmesh answers as the gateway at {gateway}, the subnet's first address: drop --gateway or give {gateway}"
                )));
            }
            return Ok(format!("{gateway}/{len}"));
        }
        let ip = if r.address.is_empty() {
            None
        } else {
            Some(addr_of(&r.address)?)
        };
        let network = self.network_for(&pool).await?;
        let node = self.agent.node.clone();
        let id = format!("{:016x}", rand::random::<u64>());
        let ep = self
            .agent
            .transact(move |st| {
                let spec = crate::state::EndpointSpec {
                    network: network.clone(),
                    netns: format!("{DOCKER_PENDING}{id}"),
                    ip,
                    owner: Some(format!("{RESERVED}{id}")),
                    ..Default::default()
                };
                ops::create_endpoint(st, &spec, &node, id.clone(), ipam::random_mac)
            })
            .await
            .map_err(refused)?;
        let addr = ep
            .ips
            .iter()
            .find(|a| pool.contains(*a))
            .ok_or_else(|| refused("the reserved endpoint has no address in the pool"))?;
        Ok(format!("{addr}/{len}"))
    }

    pub(super) async fn release_address(
        &self,
        r: &protocol::ReleaseAddress,
    ) -> Result<(), PluginError> {
        let pool = pool_of(&r.pool_id)?;
        let addr = addr_of(&r.address)?;
        if addr == ipam::gateway(&pool) {
            return Ok(());
        }
        let node = self.agent.node.clone();
        self.agent
            .transact(move |st| {
                // Only a reservation Docker never bound; a bound endpoint goes with
                // DeleteEndpoint.
                let ids: Vec<String> = st
                    .endpoints
                    .values()
                    .filter(|e| {
                        e.node == node
                            && e.ips.contains(&addr)
                            && e.owner.as_deref().is_some_and(|o| o.starts_with(RESERVED))
                    })
                    .map(|e| e.id.clone())
                    .collect();
                for id in ids {
                    ops::remove_endpoint(st, &id)?;
                }
                Ok(())
            })
            .await
            .map_err(refused)
    }
}
