//! Entry points of the fuzz targets (`fuzz/`), written once here so that the
//! targets and the corpus replay test (`tests/fuzz_corpus.rs`) run the same code.
//! Each takes arbitrary bytes and must never panic; the checks (a transmit
//! to a port or VTEP the state does not have, a datagram without its VXLAN
//! header) panic on purpose, so that a wrong answer is a finding too.
//!
//! The pipeline targets drive a [`crate::datapath::Datapath`], the very code
//! the workers run, through a sink that checks every transmit: nothing of
//! the pipeline is written again here.
//!
//! - [`state`]: the node the targets run against;
//! - [`frames`]: frame builders (seeds, tests);
//! - [`targets`]: the targets and the checking sink;
//! - [`seeds`]: each target's seeds;
//! - here: the records the pipeline targets read, and the corpus replay.
//!
//! Behind the `fuzzing` feature (and `cfg(test)`): not part of the crate's API.

#![forbid(unsafe_code)]

mod frames;
mod seeds;
mod state;
mod targets;

pub use frames::*;
pub use seeds::seeds;
pub use state::*;
pub use targets::{
    config, dns, switch_tap, switch_underlay, tunnel_config, wireguard, LOCAL_EP, PEER_EP,
};

/// The pipeline targets' input: up to [`MAX_RECORDS`] records, each a control
/// byte, a big-endian u16 length and that many bytes (or what is left).
pub const MAX_RECORDS: usize = 16;

/// Splits `data` into (control byte, payload) records.
pub fn records(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 3 && out.len() < MAX_RECORDS {
        let ctl = data[0];
        let n = usize::from(u16::from_be_bytes([data[1], data[2]])).min(data.len() - 3);
        out.push((ctl, &data[3..3 + n]));
        data = &data[3 + n..];
    }
    out
}

/// Builds a pipeline input from records (for seeds and tests).
pub fn encode(records: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ctl, d) in records {
        out.push(*ctl);
        out.extend_from_slice(&(d.len().min(0xffff) as u16).to_be_bytes());
        out.extend_from_slice(&d[..d.len().min(0xffff)]);
    }
    out
}

/// Control byte bit: the record is a virtio-net header (10 bytes) and a frame.
pub const CTL_VNET: u8 = 0x08;
/// Control byte bit: the record comes in from the other side (a TAP-side
/// record in the underlay target and the other way round).
pub const CTL_OTHER_SIDE: u8 = 0x80;

/// A target: it takes any bytes.
pub type Target = fn(&[u8]);

/// The targets of this module, by name.
pub const TARGETS: [(&str, Target); 4] = [
    ("switch_tap", switch_tap),
    ("switch_underlay", switch_underlay),
    ("wireguard", wireguard),
    ("dns", dns),
];

/// A target's seeds, by name (each crate's `seeds`).
pub type Seeds = fn(&str) -> Vec<(&'static str, Vec<u8>)>;

/// Runs every target's seeds and every file of its committed corpus
/// (`corpus/TARGET/*`) through it: what the fuzzers kept stays checked on
/// stable, in `cargo test`, for both crates' targets.
pub fn replay_corpus(corpus: &std::path::Path, targets: &[(&str, Target)], seeds: Seeds) {
    for (name, run) in targets {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "{name} has no seeds");
        for (_, s) in &seeds {
            run(s);
        }
        let dir = corpus.join(name);
        let mut files = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = e.expect("entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            // a panic names the file, to reproduce with `cargo fuzz run NAME FILE`
            eprintln!("{}", path.display());
            run(&data);
            files += 1;
        }
        assert!(files >= seeds.len(), "{}: corpus missing", dir.display());
    }
}

/// Writes every target's seeds into `corpus/TARGET/seed-NAME`.
pub fn write_seeds(corpus: &std::path::Path, targets: &[(&str, Target)], seeds: Seeds) {
    for (name, _) in targets {
        let dir = corpus.join(name);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (seed, data) in seeds(name) {
            std::fs::write(dir.join(format!("seed-{seed}")), data).expect("seed");
        }
    }
}
