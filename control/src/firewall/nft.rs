//! The agent's nftables tables, each written as one `nft -f -` batch: a
//! change applies atomically (no moment with half the ports), and the rules
//! read exactly as an operator would type them (the tests read them so too).
//! What is there is read back as `nft -j` JSON.

use super::{run, FirewallError};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Applies `script` in one transaction, whole or not at all.
pub async fn apply(script: &str) -> Result<(), FirewallError> {
    run("nft", &["-f", "-"], script).await.map(|_| ())
}

/// Tables of the agent's that, once removed for good (`--cleanup-on-exit`),
/// are not written again: the reconcile loop may still be applying them
/// while the agent stops, and whichever `nft` came last would win. Applying
/// and removing take turns, and after the removal an apply does nothing.
pub struct Owned {
    removed: tokio::sync::Mutex<bool>,
}

impl Owned {
    pub const fn new() -> Self {
        Owned {
            removed: tokio::sync::Mutex::const_new(false),
        }
    }

    /// [`apply`], unless the tables were removed for good.
    pub async fn apply(&self, script: &str) -> Result<(), FirewallError> {
        let removed = self.removed.lock().await;
        if *removed {
            return Ok(());
        }
        apply(script).await
    }

    /// [`apply`] of the script that removes the tables, for good.
    pub async fn remove(&self, script: &str) -> Result<(), FirewallError> {
        let mut removed = self.removed.lock().await;
        *removed = true;
        apply(script).await
    }
}

impl Default for Owned {
    fn default() -> Self {
        Self::new()
    }
}

/// The chains of table `family name` with the number of rules in each, or
/// `None` if there is no such table.
pub async fn list_table(
    family: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, usize>>, FirewallError> {
    let tables: Listing = serde_json::from_str(&run("nft", &["-j", "list", "tables"], "").await?)?;
    let there = tables
        .nftables
        .iter()
        .filter_map(|i| i.table.as_ref())
        .any(|t| t.family == family && t.name == name);
    if !there {
        return Ok(None);
    }
    let json = run("nft", &["-j", "list", "table", family, name], "").await?;
    Ok(Some(rule_counts(&serde_json::from_str(&json)?)))
}

/// `nft -j list ...`: a list of one-key objects (`metainfo`, `table`,
/// `chain`, `rule`...); only what the agent compares is read.
#[derive(Debug, Default, Deserialize)]
pub struct Listing {
    #[serde(default)]
    nftables: Vec<Item>,
}

#[derive(Debug, Default, Deserialize)]
struct Item {
    table: Option<Table>,
    chain: Option<Chain>,
    rule: Option<Rule>,
}

#[derive(Debug, Deserialize)]
struct Table {
    family: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct Chain {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Rule {
    chain: String,
}

/// Chains and their rule counts in a listing of one table.
pub fn rule_counts(l: &Listing) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for item in &l.nftables {
        if let Some(c) = &item.chain {
            out.entry(c.name.clone()).or_insert(0);
        }
        if let Some(r) = &item.rule {
            *out.entry(r.chain.clone()).or_insert(0) += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread with a network namespace of its own (and so
    /// nftables tables of its own), gone when the thread ends. Needs root;
    /// without it, says so and passes.
    fn in_own_netns(f: impl FnOnce() + Send + 'static) {
        let t = std::thread::spawn(move || {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                eprintln!("skipped: cannot make a network namespace ({e}); run as root");
                return;
            }
            f()
        });
        if let Err(panic) = t.join() {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn batches_apply_whole_and_listings_are_read_as_json() {
        in_own_netns(|| {
            // a runtime on this thread, so `nft` starts in its namespace
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Err(FirewallError::Spawn { .. }) = list_table("ip", "x").await {
                    eprintln!("skipped: no nft here");
                    return;
                }
                assert_eq!(list_table("ip", "vxmesh-test").await.unwrap(), None);
                apply("table ip vxmesh-test {\n  chain a {\n    type filter hook input priority 0; policy accept;\n    tcp dport 1 drop\n    tcp dport 2 drop\n  }\n  chain b {\n  }\n}\n")
                    .await
                    .unwrap();
                let chains = list_table("ip", "vxmesh-test").await.unwrap().unwrap();
                assert_eq!(
                    chains,
                    BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 0)])
                );
                // one bad line: nothing of the batch applies, and the refusal
                // is the exit status (with nft's words for the log)
                let e = apply("table ip vxmesh-test {\n  chain c {\n  }\n}\nthis is not nft\n")
                    .await
                    .unwrap_err();
                match e {
                    FirewallError::Refused {
                        program, status, ..
                    } => assert_eq!((program, status.code()), ("nft", Some(1))),
                    other => panic!("{other}"),
                }
                let chains = list_table("ip", "vxmesh-test").await.unwrap().unwrap();
                assert!(!chains.contains_key("c"), "{chains:?}");
            });
        });
    }
}
