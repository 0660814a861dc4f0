//! Replays the committed fuzz corpus (`fuzz/corpus/TARGET/*`, crash reproducers
//! included) and the seeds through the same entry points the fuzz targets call
//! (`vxmesh_dataplane::fuzzing`), so every input the fuzzers kept stays checked
//! on stable, in `cargo test`.

use std::path::PathBuf;
use vxmesh_dataplane::fuzzing::*;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

#[test]
fn corpus_and_seeds_replay_without_panic() {
    vxmesh_dataplane::fuzzing::replay_corpus(&corpus(), &TARGETS, seeds);
}

/// Writes the seeds into the corpus: `cargo test -p vxmesh-dataplane --test
/// fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    vxmesh_dataplane::fuzzing::write_seeds(&corpus(), &TARGETS, seeds);
}

/// Found by `switch_underlay`: a SYN from another node's ingress sandbox to a
/// local task, from its own address and port to itself (a LAND packet), has
/// one conntrack key for both directions; it was tracked, indexing that key
/// twice (a debug assertion; in release, one entry under one key twice).
#[test]
fn land_packet_through_ingress_is_not_tracked() {
    let land = tcp_frame(
        SBOX_B,
        TASK,
        [10, 255, 0, 10],
        [10, 255, 0, 10],
        80,
        80,
        0x02,
        b"",
    );
    let zero = tcp_frame(SBOX_B, TASK, [0; 4], [0; 4], 0, 0, 0x02, b"");
    for f in [land, zero] {
        switch_underlay(&encode(&[
            (0, &datagram(INGRESS_VNI, &f)),
            (0, &datagram(INGRESS_VNI, &f)),
        ]));
    }
}
