//! The client commands: each one or two API calls, their answer printed as a
//! table or as JSON.

use super::output::{self, join};
use super::{
    esc, Command, EndpointCmd, Format, ListCmd, NetworkCmd, NodeCmd, OnOff, PolicyCmd, ServiceCmd,
};
use crate::api::client::Client;
use crate::api_types::conntrack::ConntrackEntry;
use crate::api_types::doctor::Report;
use crate::api_types::endpoints::{Endpoint, EndpointSpec};
use crate::api_types::lb::VirtualService;
use crate::api_types::networks::{Network, NetworkInspect, NetworkListing, NetworkSpec};
use crate::api_types::nodes::{ExternalNode, Node, NodeListing, NodeUpdate};
use crate::api_types::policies::{Policy, PolicySpec};
use crate::api_types::services::{
    Service, ServiceInspect, ServiceListing, ServiceSpec, ServiceUpdate,
};
use crate::api_types::stats::Stats;
use crate::api_types::trace::TraceRequest;
use hyper::Method;

pub(super) async fn run(c: &Client, f: Format, cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Agent(_) => unreachable!("handled in main"),
        Command::Network(n) => network(c, f, n).await,
        Command::Endpoint(e) => endpoint(c, f, e).await,
        Command::Node(n) => node(c, f, n).await,
        Command::Stats => output::stats(f, &c.get::<Stats>("/v1/stats").await?),
        Command::Doctor => {
            let report = match c
                .call::<Report>(Method::POST, "/v1/doctor", None::<()>)
                .await
            {
                Ok(v) => v,
                // no agent to ask is the first thing to mend: said as a check
                Err(e) => output::doctor_unreachable(&format!("{e:#}")),
            };
            let failed = output::doctor(f, &report)?;
            if failed > 0 {
                anyhow::bail!("{failed} check(s) failed (see their fix: lines)");
            }
            Ok(())
        }
        Command::Flows(a) => super::flows::run(c, f, a).await,
        Command::Trace {
            network,
            filter,
            duration,
            count,
            file,
        } => {
            let req = TraceRequest {
                network,
                filter,
                seconds: duration,
                count,
            };
            let pcap = c.call_bytes(Method::POST, "/v1/trace", Some(req)).await?;
            std::fs::write(&file, &pcap)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
            let mut frames = 0;
            if let Ok(mut r) = pcap_file::pcap::PcapReader::new(&pcap[..]) {
                while let Some(Ok(_)) = r.next_packet() {
                    frames += 1;
                }
            }
            eprintln!("{frames} frames written to {}", file.display());
            Ok(())
        }
        Command::Service(s) => service(c, f, s).await,
        Command::Policy(p) => policy(c, f, p).await,
        Command::Lb(ListCmd::Ls) => output::lb(f, &c.get::<Vec<VirtualService>>("/v1/lb").await?),
        Command::Conntrack(ListCmd::Ls) => {
            output::conntrack(f, &c.get::<Vec<ConntrackEntry>>("/v1/conntrack").await?)
        }
    }
}

async fn network(c: &Client, f: Format, cmd: NetworkCmd) -> anyhow::Result<()> {
    match cmd {
        NetworkCmd::Create {
            name,
            subnets,
            encrypted,
            internal,
            vni,
            peer_vteps,
        } => {
            let spec = NetworkSpec {
                name,
                subnets,
                vni,
                encrypted,
                internal,
                peer_vteps,
            };
            let n: Network = c.post("/v1/networks", spec).await?;
            output::created(f, &n, format!("{} {}", n.name, n.vni))
        }
        NetworkCmd::Ls => output::networks(f, &c.get::<Vec<NetworkListing>>("/v1/networks").await?),
        NetworkCmd::Inspect { name } => output::pretty(
            &c.get::<NetworkInspect>(&format!("/v1/networks/{}", esc(&name)))
                .await?,
        ),
        NetworkCmd::Rm { name } => {
            let n: Network = c.delete(&format!("/v1/networks/{}", esc(&name))).await?;
            output::created(f, &n, n.name.clone())
        }
    }
}

async fn endpoint(c: &Client, f: Format, cmd: EndpointCmd) -> anyhow::Result<()> {
    match cmd {
        EndpointCmd::Create {
            network,
            netns,
            ifname,
            ip,
            service,
            veth,
        } => {
            let spec = EndpointSpec {
                network,
                netns,
                ifname: Some(ifname),
                ip,
                service,
                veth,
                owner: None,
            };
            let e: Endpoint = c.post("/v1/endpoints", spec).await?;
            output::created(f, &e, format!("{} {}", e.id, join(&e.ips)))
        }
        EndpointCmd::Ls => output::endpoints(f, &c.get::<Vec<Endpoint>>("/v1/endpoints").await?),
        EndpointCmd::Rm { id } => {
            let e: Endpoint = c.delete(&format!("/v1/endpoints/{}", esc(&id))).await?;
            output::created(f, &e, e.id.clone())
        }
    }
}

async fn node(c: &Client, f: Format, cmd: NodeCmd) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::Ls => output::nodes(f, &c.get::<Vec<NodeListing>>("/v1/nodes").await?),
        NodeCmd::Add {
            name,
            advertise_addr,
            public_key,
            tunnel_addr,
            wg_port,
        } => {
            let body = ExternalNode {
                name,
                advertise_addr,
                public_key,
                tunnel_addr,
                wg_port: Some(wg_port),
            };
            let n: Node = c.post("/v1/nodes", body).await?;
            let line = format!("{} {}", n.name, output::or_dash(n.tunnel_addr));
            output::created(f, &n, line)
        }
        NodeCmd::Rm { name } => {
            let n: Node = c.delete(&format!("/v1/nodes/{}", esc(&name))).await?;
            output::created(f, &n, n.name.clone())
        }
        NodeCmd::Update { name, ingress } => {
            let body = NodeUpdate {
                ingress: ingress.map(|i| i == OnOff::On),
            };
            let n: Node = c
                .post(&format!("/v1/nodes/{}/update", esc(&name)), body)
                .await?;
            let state = if n.ingress {
                "ingress on"
            } else {
                "ingress off"
            };
            output::created(f, &n, format!("{} {state}", n.name))
        }
        NodeCmd::RotateKey { name } => {
            let path = format!("/v1/nodes/{}/rotate-key", esc(&name));
            let n: Node = c.call(Method::POST, &path, None::<()>).await?;
            output::created(f, &n, format!("{} rotation requested", n.name))
        }
    }
}

async fn service(c: &Client, f: Format, cmd: ServiceCmd) -> anyhow::Result<()> {
    match cmd {
        ServiceCmd::Create {
            name,
            networks,
            publish,
            endpoint_mode,
            scheduler,
            health,
            health_interval,
        } => {
            let spec = ServiceSpec {
                name,
                networks,
                publish,
                endpoint_mode,
                scheduler,
                health,
                health_interval_ms: health_interval.map(|d| d.as_millis() as u64),
            };
            let s: Service = c.post("/v1/services", spec).await?;
            output::created(f, &s, format!("{} {}", s.name, output::vips(&s)))
        }
        ServiceCmd::Update {
            name,
            publish_add,
            publish_rm,
        } => {
            let body = ServiceUpdate {
                publish_add,
                publish_rm,
            };
            let s: Service = c
                .post(&format!("/v1/services/{}/update", esc(&name)), body)
                .await?;
            output::created(f, &s, s.name.clone())
        }
        ServiceCmd::Ls => output::services(f, &c.get::<Vec<ServiceListing>>("/v1/services").await?),
        ServiceCmd::Inspect { name } => output::pretty(
            &c.get::<ServiceInspect>(&format!("/v1/services/{}", esc(&name)))
                .await?,
        ),
        ServiceCmd::Rm { name } => {
            let s: Service = c.delete(&format!("/v1/services/{}", esc(&name))).await?;
            output::created(f, &s, s.name.clone())
        }
    }
}

async fn policy(c: &Client, f: Format, cmd: PolicyCmd) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Add {
            node,
            port,
            action,
            from,
            audit,
        } => {
            let spec = PolicySpec {
                node,
                port,
                action,
                from,
                audit,
            };
            let p: Policy = c.post("/v1/policies", spec).await?;
            output::created(f, &p, p.id.clone())
        }
        PolicyCmd::Ls => output::policies(f, &c.get::<Vec<Policy>>("/v1/policies").await?),
        PolicyCmd::Rm { id } => {
            let p: Policy = c.delete(&format!("/v1/policies/{}", esc(&id))).await?;
            output::created(f, &p, p.id.clone())
        }
    }
}
