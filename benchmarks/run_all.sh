#!/usr/bin/env bash
# Run every benchmark (or the ones named) and save each JSON result to benchmarks/results/NAME.json.
#   benchmarks/run_all.sh                 # full sizes (about 45 min on a 2-core CPU: cost ~20, memory ~15)
#   benchmarks/run_all.sh --smoke         # seconds each
#   benchmarks/run_all.sh grad-throughput memory   # a subset
# ICP_THREADS=1 pins torch to one thread (use it on a shared, oversubscribed CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SMOKE=""
NAMES=()
for a in "$@"; do
  if [[ "$a" == "--smoke" ]]; then SMOKE="--smoke"; else NAMES+=("$a"); fi
done
if [[ ${#NAMES[@]} -eq 0 ]]; then NAMES=(icp-throughput grad-throughput captum cost memory); fi
OUT=${ICP_BENCH_RESULTS:-benchmarks/results}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
start=$(date +%s)
for n in "${NAMES[@]}"; do
  t0=$(date +%s)
  "$PY" -m icp_influence bench "$n" $SMOKE --json | tail -n 1 > "$OUT/$n.json.tmp"
  mv "$OUT/$n.json.tmp" "$OUT/$n.json"
  echo "[bench] $n: $(( $(date +%s) - t0 )) s -> $OUT/$n.json" >&2
done
echo "[bench] total: $(( $(date +%s) - start )) s" >&2
