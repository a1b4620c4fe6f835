#!/usr/bin/env bash
# Fuzzes every reader of untrusted bytes for a bounded number of executions each and prints
# the executions reached (record them in docs/reliability.md).
#
#   [TARGETS="gguf_header unpack"] scripts/fuzz.sh [RUNS_PER_TARGET]     (default: all, 10000000)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz drives libFuzzer through nightly-only
# rustc flags; this machine has only the stable toolchain, so RUSTC_BOOTSTRAP=1 unlocks them, and
# the sanitizer is off (-s none: no ASan runtime on stable) — Rust's own bounds checks and the
# targets' assertions are the oracle. Crashes land in fuzz/artifacts/<target>/: turn each into a
# regression test (formats/tests/fuzz_regressions.rs) before fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10000000}
export RUSTC_BOOTSTRAP=1
targets=${TARGETS:-gguf_header safetensors_header hf_config unpack}
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
done
# Seeds: real files of each kind (small), so the fuzzer starts from valid structure.
cp tests/fixtures/gguf/python_written.gguf fuzz/corpus/gguf_header/ 2>/dev/null || true
cp tests/fixtures/tiny/bf16/config.json fuzz/corpus/hf_config/tiny.json
cp tests/fixtures/odd/bf16/config.json fuzz/corpus/hf_config/odd.json
for t in $targets; do
  log=$(mktemp)
  start=$(date +%s.%N)
  cargo fuzz run -s none --release "$t" -- -runs="$runs" -max_len=65536 -rss_limit_mb=2048 \
    -timeout=10 -print_final_stats=1 2>"$log" || { tail -40 "$log"; echo "FAIL: $t"; exit 1; }
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  echo "$t: $execs executions in ${secs%.*} s (build included), $(grep -o 'cov: [0-9]*' "$log" | tail -1), no crash"
  rm -f "$log"
done
