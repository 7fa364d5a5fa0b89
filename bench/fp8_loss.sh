#!/usr/bin/env bash
# FP8 training against BF16 on the GPU machine (issue 5): 100 steps of 2-layer
# models with Llama 2 7B and Llama 3 8B layer shapes, batch 8, seq 256, on
# 800 rows of real text that no step repeats (the GPU machine's Python
# standard library sources); the fp8 loss within 3% of the bf16 loss at
# every step, no NaN or inf (test/gpu/fp8_loss.py says how).
#
# Two halves, because the GPU machine has no LLVM:
#   here:    bench/fp8_loss.sh compile OUT_DIR [FP8_FLAGS...]
#            (llamac compile --emit package for both models and both
#            precisions into OUT_DIR/<case>-<precision>, with llamac-run,
#            the scripts, configs and tokenizers copied beside them;
#            FP8_FLAGS, e.g. --fp8-lm-head, go to the fp8 compiles)
#   GPU box: OUT_DIR/fp8_loss.sh run [WORK_DIR [FP8_LOSS_OPTIONS...]]
#            (python3 fp8_loss.py over both cases; WORK_DIR, default a new
#            temporary folder, keeps each case's metrics, logs and FP8
#            state; it needs about 15 GB free while a case runs; options
#            such as --lr 1e-4 --lr-schedule constant --warmup-steps 0 go to
#            fp8_loss.py)
set -euo pipefail
cases=(llama2-7b-2layer:sp-bpe-32k llama3-8b-2layer:llama-3)

case "${1:-}" in
compile)
  out=${2:?usage: fp8_loss.sh compile OUT_DIR [FP8_FLAGS...]}
  root=$(cd "$(dirname "$0")/.." && pwd)
  mkdir -p "$out/configs" "$out/tokenizers"
  for entry in "${cases[@]}"; do
    name=${entry%%:*} tokenizer=${entry#*:}
    for precision in bf16 fp8; do
      rm -rf "${out:?}/$name-$precision"
      flags=()
      [[ $precision == fp8 ]] && flags=("${@:3}")
      "$root/build/bin/llamac" compile \
        --config "$root/test/gpu/hf/$name/config.json" --batch 8 --seq 256 \
        --precision "$precision" "${flags[@]}" --emit package \
        -o "$out/$name-$precision"
    done
    cp -r "$root/test/gpu/hf/$name" "$out/configs/"
    cp -r "$root/test/golden/tokenizers/$tokenizer" "$out/tokenizers/"
  done
  cp "$root/build/bin/llamac-run" "$root/test/gpu/fp8_loss.py" \
    "$root/test/gpu/hf_common.py" "$0" "$out/"
  ;;
run)
  work=$(realpath -m "${2:-$(mktemp -d)}")
  cd "$(dirname "$0")"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 fp8_loss.py --llamac-run ./llamac-run --packages . \
    --configs configs --data python-stdlib --tokenizers tokenizers \
    --work "$work" "${@:3}" "${cases[@]%%:*}"
  ;;
*)
  sed -n '2,19p' "$0"
  exit 2
  ;;
esac
