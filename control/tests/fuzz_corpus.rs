//! Replays the committed fuzz corpus (`fuzz/corpus/TARGET/*`, crash reproducers
//! included) and the seeds through the same entry points the fuzz targets call
//! (`vxmesh_control::fuzzing`), so every input the fuzzers kept stays checked
//! on stable, in `cargo test`.

use std::path::PathBuf;
use vxmesh_control::fuzzing::{seeds, TARGETS};

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

#[test]
fn corpus_and_seeds_replay_without_panic() {
    vxmesh_dataplane::fuzzing::replay_corpus(&corpus(), &TARGETS, seeds);
}

/// Writes the seeds into the corpus: `cargo test -p vxmesh-control --test
/// fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    vxmesh_dataplane::fuzzing::write_seeds(&corpus(), &TARGETS, seeds);
}
