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
#            (per model: llamac-bench on each package, then
#            `python3 HF_BASELINE_PY hf <model>` in the same call, then
#            llamac-bench again; a table of the step times, llamac's the
#            mean of its two runs, and their ratio)
# llamac's step is the mean over back-to-back steps after warm-up, measured
# as HF_BASELINE_PY measures HF's (llamac-bench's defaults: 5 warm-up steps,
# 10 timed). PRECISIONS="bf16" limits both halves to the listed precisions.
# HF_BASELINE_PY is shared/bench/hf_baseline.py. Record the numbers, card and
# date in bench/RESULTS.md.
set -euo pipefail
models=(llama2-7b:llama-2-7b llama3-8b:llama-3-8b)
read -ra precisions <<<"${PRECISIONS:-bf16 fp8}"

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
  # Each llamac package runs once before HF's step and once after it, and
  # the table takes the mean: a run right after another program's minute of
  # load measures about 1% slower (session 9: 150.7 ms before, 152.3 ms
  # after HF on one H200), so a single order would favour one side.
  # While each program runs, the GPU's SM clock, power and clock event
  # reasons are sampled every 250 ms; the table gives the means of clock and
  # power over the samples in which kernels ran at least 90% of the time, and
  # the share of those in which the software power cap held the clock down
  # (reason bit 0x4). Under load an H200 sits at its 700 W cap and lowers its
  # clock, by how much depends on the work and on the data (session 11:
  # llamac's forward and backward alone at 1530 MHz, capped in every sample;
  # its AdamW alone at 1980 MHz, 480 W; HF's eager step at 1768 MHz).
  samples=$(mktemp)
  trap 'rm -f "$samples"' EXIT
  sampled() {
    nvidia-smi \
      --query-gpu=utilization.gpu,clocks.sm,power.draw,clocks_event_reasons.active \
      --format=csv,noheader,nounits -lms 250 >"$samples" &
    local sampler=$! status=0
    "$@" || status=$?
    kill "$sampler"
    wait "$sampler" 2>/dev/null || true
    return $status
  }
  # Prints "clock_MHz power_W capped_%" of the busy samples; the reasons
  # are a hex mask (0x...), bit 0x4 in its last digit.
  busy() {
    awk -F', *' '$1 >= 90 { n++; clock += $2; watts += $3
        if (index("4567cdefCDEF", substr($4, length($4)))) capped++ }
      END { if (n) printf "%.0f %.0f %.0f\n", clock / n, watts / n,
                          100 * capped / n;
            else print "nan nan nan" }' "$samples"
  }
  # Prints "step_ms clock_MHz power_W capped_%" of one llamac-bench run.
  bench() {
    # Printed whole, then parsed (tee /dev/stderr would reopen, and so
    # truncate, a log file that stdout and stderr are redirected to).
    report=$(sampled ./llamac-bench --package "$1" ${2:-})
    echo "$report" >&2
    echo "$(sed -n 's/^RESULT .*"step_ms":\([0-9.]*\).*/\1/p' <<<"$report")" \
      "$(busy)"
  }
  rows=()
  for entry in "${models[@]}"; do
    name=${entry%%:*}
    declare -A before=()
    for precision in "${precisions[@]}"; do
      before[$precision]=$(bench "$name-$precision" "${3:-}")
    done
    # Printed as it comes, so that a call cut short keeps HF's number.
    hf=$(sampled python3 "$baseline" hf "$name")
    grep '^RESULT' <<<"$hf"
    load=$(busy)
    echo "HF $name: clock, power and % power-capped while busy: $load" >&2
    theirs="$(sed -n 's/^RESULT .*"step_ms": \([0-9.]*\).*/\1/p' <<<"$hf") $load"
    for precision in "${precisions[@]}"; do
      after=$(bench "$name-$precision" "${3:-}")
      rows+=("$name $precision $theirs ${before[$precision]} $after")
    done
  done
  printf '\n%-10s %-9s %12s %10s %10s %10s %7s  %s\n' model precision \
    "HF eager ms" "before" "after" "llamac ms" ratio \
    "MHz, W, % power-capped while busy: HF / before / after"
  for row in "${rows[@]}"; do
    read -r name precision theirs hfMHz hfW hfCapped first firstMHz firstW \
      firstCapped second secondMHz secondW secondCapped <<<"$row"
    python3 -c "
ours = ($first + $second) / 2
print('%-10s %-9s %12.1f %10.2f %10.2f %10.2f %7.3f  %s / %s / %s' % (
      '$name', '$precision', $theirs, $first, $second, ours, ours / $theirs,
      '$hfMHz, $hfW, $hfCapped%', '$firstMHz, $firstW, $firstCapped%',
      '$secondMHz, $secondW, $secondCapped%'))"
  done
  ;;
*)
  sed -n '2,14p' "$0"
  exit 2
  ;;
esac
