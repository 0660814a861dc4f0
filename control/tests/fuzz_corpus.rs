//! Replays the committed fuzz corpus (`fuzz/corpus/TARGET/*`, crash reproducers
//! included) and the seeds through the same entry points the fuzz targets call
//! (`vxmesh_control::fuzzing`), so every input the fuzzers kept stays checked
//! on stable, in `cargo test`.

use std::path::PathBuf;
use vxmesh_control::fuzzing::{seeds, TARGETS};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn corpus_and_seeds_replay_without_panic() {
    for (name, run) in TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "{name} has no seeds");
        for (_, s) in &seeds {
            run(s);
        }
        let dir = corpus_dir(name);
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

/// Writes the seeds into the corpus: `cargo test -p vxmesh-control --test
/// fuzz_corpus -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    for (name, _) in TARGETS {
        let dir = corpus_dir(name);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (seed, data) in seeds(name) {
            std::fs::write(dir.join(format!("seed-{seed}")), data).expect("seed");
        }
    }
}
