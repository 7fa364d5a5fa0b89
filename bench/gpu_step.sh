#!/usr/bin/env bash
# Step time of llamac against Hugging Face on the GPU machine: Llama 2 7B and
# Llama 3 8B, batch 8, seq 256, AdamW, no clipping (as the baseline); llamac
# in bf16 and in fp8 (delayed scaling), HF eager in bf16.
#
# Two halves, because the GPU machine has no LLVM:
#   here:    bench/gpu_step.sh compile OUT_DIR
#            (llamac compile --emit package for both models and both
#            precisions into OUT_DIR/<model>-<precision>, with llamac-bench
#            and llamac-run copied beside them)
#   GPU box: OUT_DIR/gpu_step.sh run HF_BASELINE_PY [--breakdown or --tune]
#            (llamac-bench on each package, then
#            `python3 HF_BASELINE_PY hf <model>` in the same call, and a
#            table of the step times and their ratio)
# HF_BASELINE_PY is shared/bench/hf_baseline.py. Record the numbers, card and
# date in bench/RESULTS.md.
set -euo pipefail
models=(llama2-7b:llama-2-7b llama3-8b:llama-3-8b)
precisions=(bf16 fp8)

case "${1:-}" in
compile)
  out=${2:?usage: gpu_step.sh compile OUT_DIR}
  root=$(cd "$(dirname "$0")/.." && pwd)
  mkdir -p "$out"
  for entry in "${models[@]}"; do
    name=${entry%%:*} config=${entry#*:}
    for precision in "${precisions[@]}"; do
      rm -rf "${out:?}/$name-$precision"
      "$root/build/bin/llamac" compile \
        --config "$root/test/configs/$config.json" --batch 8 --seq 256 \
        --precision "$precision" --emit package -o "$out/$name-$precision"
    done
  done
  cp "$root/build/bin/llamac-bench" "$root/build/bin/llamac-run" "$0" "$out/"
  ;;
run)
  baseline=${2:?usage: gpu_step.sh run HF_BASELINE_PY [--breakdown or --tune]}
  cd "$(dirname "$0")"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  rows=()
  for entry in "${models[@]}"; do
    name=${entry%%:*}
    # Printed as it comes, so that a call cut short keeps HF's number.
    hf=$(python3 "$baseline" hf "$name")
    grep '^RESULT' <<<"$hf"
    theirs=$(sed -n 's/^RESULT .*"step_ms": \([0-9.]*\).*/\1/p' <<<"$hf")
    for precision in "${precisions[@]}"; do
      # Printed whole, then parsed (tee /dev/stderr would reopen, and so
      # truncate, a log file that stdout and stderr are redirected to).
      report=$(./llamac-bench --package "$name-$precision" --steps 15 ${3:-})
      echo "$report"
      ours=$(sed -n 's/^RESULT .*"step_ms":\([0-9.]*\).*/\1/p' <<<"$report")
      rows+=("$name $precision $theirs $ours")
    done
  done
  printf '\n%-10s %-9s %12s %12s %7s\n' model precision "HF eager ms" \
    "llamac ms" ratio
  for row in "${rows[@]}"; do
    read -r name precision theirs ours <<<"$row"
    printf '%-10s %-9s %12.1f %12.1f %7.3f\n' "$name" "$precision" "$theirs" \
      "$ours" "$(python3 -c "print($ours / $theirs)")"
  done
  ;;
*)
  sed -n '2,14p' "$0"
  exit 2
  ;;
esac
