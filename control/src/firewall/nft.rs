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
