#!/usr/bin/env bash
# Soak test: generation under load must not leak and must be deterministic.
#
#   scripts/soak.sh [MODEL.gguf] [REPS]
#
# 1. Determinism: `tern run` with a fixed seed (sampling on, 2 threads) twice; the texts must be
#    identical.
# 2. Leaks: one `tern bench` process runs REPS rounds of prompt + generation with 2 threads
#    (a fresh session and KV cache each round) while its RSS is sampled every 0.1 s; the peak
#    of the last third of the run must not exceed the peak of the first third by more than
#    max(5 %, 8 MiB).
# Default model: the tiny fixture converted to I2_S (made here). Exit 1 on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
tern=target/release/tern
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
model=${1:-}
reps=${2:-1000}
if [ -z "$model" ]; then
  model=$work/tiny-i2_s.gguf
  $tern convert tests/fixtures/tiny/bf16 -o "$model" --quiet --no-verify >/dev/null
fi

run() { $tern run "$model" -p "The soak test" -n 200 --ignore-eos --seed 1234 --temp 0.8 -t 2 2>/dev/null; }
run > "$work/a.txt"
run > "$work/b.txt"
if ! cmp -s "$work/a.txt" "$work/b.txt"; then
  echo "FAIL: two runs with seed 1234 differ"; diff "$work/a.txt" "$work/b.txt" | head; exit 1
fi
echo "deterministic: two seeded runs gave the same $(wc -c < "$work/a.txt") bytes"

$tern bench "$model" -p 64 -n 128 -t 2 -r "$reps" --json > "$work/bench.json" 2>/dev/null &
pid=$!
: > "$work/rss"
while kill -0 "$pid" 2>/dev/null; do
  awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null >> "$work/rss" || true
  sleep 0.1
done
wait "$pid"
python3 - "$work/rss" <<'PY'
import sys
rss = [int(x) for x in open(sys.argv[1]) if x.strip()]
if len(rss) < 9:
    sys.exit(f"FAIL: only {len(rss)} RSS samples; raise REPS")
third = len(rss) // 3
first, last = max(rss[:third]), max(rss[-third:])
allowed = max(first * 0.05, 8 * 1024)
print(f"RSS over {len(rss)} samples: first third peak {first/1024:.1f} MiB, last third peak {last/1024:.1f} MiB")
if last - first > allowed:
    sys.exit(f"FAIL: RSS grew by {(last-first)/1024:.1f} MiB (allowed {allowed/1024:.1f})")
print("PASS: RSS flat")
PY
