#!/usr/bin/env bash
# Runs each fuzz target (fuzz/fuzz_targets, bodies in lb_core::fuzzing) under libFuzzer for
# SECONDS_PER_TARGET seconds, on stable Rust: the coverage instrumentation cargo-fuzz would
# add, without its sanitizer (which needs nightly). New inputs go to fuzz/work/TARGET (not
# checked in); crashes to fuzz/findings/TARGET/. A finding is fixed, then its input is added
# to fuzz/corpus/TARGET/, which `cargo test` replays (gantry/tests/all/fuzz_corpus.rs).
#
#   bash fuzz/run.sh                                  # 60 s each, every target
#   SECONDS_PER_TARGET=600 TARGETS="http_request" bash fuzz/run.sh
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_PER_TARGET=${SECONDS_PER_TARGET:-60}
TARGETS=${TARGETS:-"http_request chunked_body proxy_protocol config kubernetes_service plugin_answers"}

if ! command -v c++ >/dev/null 2>&1; then
  sudo_if() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if apt-get update -qq
  sudo_if env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++
fi

host=$(rustc -vV | sed -n 's/^host: //p')
coverage=(
  -Cpasses=sancov-module
  -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
  -Cllvm-args=-sanitizer-coverage-pc-table
  -Cllvm-args=-sanitizer-coverage-trace-compares
  --cfg fuzzing
  -Cdebug-assertions
)
# --target keeps the instrumentation out of build scripts.
RUSTFLAGS="${coverage[*]}" cargo build --release --locked --target "$host" --bins >&2

for target in $TARGETS; do
  mkdir -p "work/$target" "findings/$target"
  log="work/$target.log"
  # The scratch folder first: libFuzzer adds what it finds to the first folder only.
  "target/$host/release/$target" "work/$target" "corpus/$target" \
    -max_total_time="$SECONDS_PER_TARGET" -artifact_prefix="findings/$target/" \
    -print_final_stats=1 -rss_limit_mb=2048 >"$log" 2>&1 || true
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  coverage_now=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  found=$(find "findings/$target" -type f | wc -l)
  echo "$target: ${runs:-?} executions in ${SECONDS_PER_TARGET}s, coverage ${coverage_now:-?} edges, $found finding(s)"
  find "findings/$target" -type f -exec echo "  {}" \;
done
