#!/usr/bin/env bash
# The end-to-end pipeline benchmark (benches/pipeline.rs, issue #16): broker produce rate, the
# raw read rate (the ceiling), Python's json.loads, the drain rate and peak RSS of `run alerts`,
# `run files` and `run window`, and feed-to-browser latency percentiles of `quakestream up`.
# It prints one markdown table on stdout; progress goes to stderr.
#
#   scripts/bench-pipeline.sh                                    # N = 200,000, 30 samples
#   QS_BENCH_RECORDS=50000 QS_BENCH_LATENCY_SAMPLES=10 scripts/bench-pipeline.sh
#   QS_BENCH_ROUNDS=5 QS_BENCH_COMPONENTS=alerts scripts/bench-pipeline.sh  # medians of 5 rounds
#
# The raw read, python3's pass and the drains run in rounds (default 3) and the table shows
# their medians: on a shared machine one run's ceiling can be off by 2x.
#
# Not part of scripts/test.sh: `cargo test` does not run benches. Needs python3 for the
# json.loads line (without it that line says "—").
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/quakestream/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# The release binary the bench runs as its processes (`cargo bench` builds it too, with the
# bench profile, which is the release profile; building it first keeps the timed run free of
# compile work and makes a build failure obvious).
cargo build --release --locked --bin quakestream
cargo bench --locked --bench pipeline "$@"
