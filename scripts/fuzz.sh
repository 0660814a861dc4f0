#!/usr/bin/env bash
# Fuzzes each target for a bounded time: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# (default 60 s, every target). Installs cargo-fuzz if missing; libFuzzer's
# instrumentation needs nightly flags, which the stable toolchain accepts with
# RUSTC_BOOTSTRAP=1. Each run starts from the committed corpus fuzz/corpus/TARGET
# (read only) and writes what it finds to fuzz/target/corpus/TARGET (merge what
# adds coverage into the committed corpus as docs/reliability.md shows);
# a crash, panic, timeout or leak leaves its input in fuzz/artifacts/TARGET and
# makes the script fail. Replay a crash: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo
# fuzz run -s none TARGET artifacts/TARGET/crash-...), then add it to
# fuzz/corpus/TARGET as regression-WHAT so that `cargo test` replays it for good.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
all=(switch_tap switch_underlay wireguard dns api_json cni_config)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all[@]}"); fi
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd fuzz
# no sanitizer: the code under test has no unsafe (the drivers that do are
# not fuzzed), and twice the executions find more; overflow checks and debug
# assertions stay on
cargo fuzz build -s none
triple=$(rustc -vV | sed -n 's/^host: //p')
summary=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "target/corpus/$t" "artifacts/$t"
    log=$(mktemp)
    echo "== $t: ${secs}s"
    set +e
    # the binary cargo fuzz built above (`cargo fuzz run` would build again)
    "target/$triple/release/$t" "target/corpus/$t" "corpus/$t" \
        -artifact_prefix="artifacts/$t/" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -oP 'stat::number_of_executed_units:\s*\K\d+' "$log" | tail -1)
    cov=$(grep -oP '#\d+\s+\w+\s+cov: \K\d+' "$log" | tail -1)
    if [ "$rc" -ne 0 ]; then
        failed=1
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -20
        summary+=("$t: FAILED (exit $rc) after ${execs:-?} execs; see fuzz/artifacts/$t")
    else
        summary+=("$t: ok, ${secs}s, ${execs:-?} execs, coverage ${cov:-?}, $(ls "target/corpus/$t" | wc -l) new inputs")
    fi
    rm -f "$log"
done
echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
