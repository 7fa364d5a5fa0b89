"""GPU end-to-end parity: llamac-run vs Hugging Face transformers, same weights, same data.

Usage (on the GPU machine): python3 hf_parity.py LLAMAC_RUN PACKAGES_DIR CONFIGS_DIR OUT_DIR CASE...

For each CASE, CONFIGS_DIR/CASE/config.json is the model and PACKAGES_DIR/CASE the package that
`llamac compile --config CONFIGS_DIR/CASE/config.json --batch 8 --seq 256 --precision bf16
--emit package -o PACKAGES_DIR/CASE` wrote. The script
  1. builds the model with transformers (seeded HF init), casts it to bf16 and saves the weights;
  2. writes 160 token rows (arithmetic progressions, learnable; every fifth row has its first half
     of labels masked);
  3. trains 20 steps with HF as people run it: bf16 weights, SDPA attention, autocast, fused
     torch.optim.AdamW (constant lr, weight decay 0.01 on every tensor, no clipping), rows in file
     order, 8 per step; keeps the losses and the step-1 gradients;
  4. runs llamac-run on the same weights and data with the same settings;
  5. compares: per-step loss within 2% and step-1 gradients within 2e-2 (relative Frobenius norm,
     per tensor) -- the bounds of the GPU-backend issue for two bf16 implementations.
Prints one line per case and "PARITY OK" or "PARITY FAILED" last.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from hf_common import hf_model, run_llamac, save_weights

BATCH, SEQ, STEPS, ROWS = 8, 256, 20, 160
LR = {"tiny": 1e-3}
DEFAULT_LR = 3e-4


def rows(vocab):
    out = []
    for r in range(ROWS):
        start, stride = (r * 13) % vocab, 1 + r % 4
        ids = [(start + i * stride) % vocab for i in range(SEQ)]
        row = {"input_ids": ids}
        if r % 5 == 0:
            row["labels"] = [-100] * (SEQ // 2) + ids[SEQ // 2:]
        out.append(row)
    return out


def run_case(llamac_run, packages, configs, out_root, case):
    out = os.path.join(out_root, case)
    os.makedirs(out, exist_ok=True)
    config, model = hf_model(os.path.join(configs, case, "config.json"))
    save_weights(model, config, os.path.join(out, "model.safetensors"))
    data = rows(config.vocab_size)
    with open(os.path.join(out, "data.jsonl"), "w") as f:
        for row in data:
            f.write(json.dumps(row) + "\n")

    # An f32 reference of the step-1 gradients (same bf16 weights, upcast):
    # how far each bf16 implementation is from the exact answer.
    with torch.device("cuda"):
        reference = LlamaForCausalLM(config).float()
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    first = [data[b % ROWS] for b in range(BATCH)]
    ids0 = torch.tensor([r["input_ids"] for r in first], device="cuda")
    labels0 = torch.tensor([r.get("labels", r["input_ids"]) for r in first], device="cuda")
    reference(input_ids=ids0, labels=labels0).loss.backward()
    exact = {n: p.grad.float() for n, p in reference.named_parameters()}
    del reference
    torch.cuda.empty_cache()

    lr = LR.get(case, DEFAULT_LR)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, fused=True)
    hf_losses = []
    for step in range(STEPS):
        batch = [data[(step * BATCH + b) % ROWS] for b in range(BATCH)]
        ids = torch.tensor([r["input_ids"] for r in batch], device="cuda")
        labels = torch.tensor([r.get("labels", r["input_ids"]) for r in batch], device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        if step == 0:
            grads = {n: p.grad.float().contiguous() for n, p in model.named_parameters()}
        opt.step()
        opt.zero_grad(set_to_none=True)
        hf_losses.append(loss.item())
    del model, opt
    torch.cuda.empty_cache()

    metrics = os.path.join(out, "metrics.jsonl")
    dump = os.path.join(out, "llamac_grads.safetensors")
    cmd = [llamac_run, "--package", os.path.join(packages, case),
           "--weights", os.path.join(out, "model.safetensors"),
           "--data", os.path.join(out, "data.jsonl"), "--steps", str(STEPS),
           "--lr", str(lr), "--lr-schedule", "constant", "--weight-decay", "0.01",
           "--max-grad-norm", "0", "--dump-grads", dump, "--metrics", metrics]
    if run_llamac(case, cmd) is None:
        return False
    ours = [json.loads(line)["loss"] for line in open(metrics)]
    loss_err = max(abs(a - b) / abs(b) for a, b in zip(ours, hf_losses))
    mine = load_file(dump)
    worst, worst_name = 0.0, ""
    to_exact = {"hf": 0.0, "llamac": 0.0}
    for name, g in grads.items():
        got = mine[name].to(g.device)
        err = ((got - g).norm() / g.norm()).item()
        if err > worst:
            worst, worst_name = err, name
        ref = exact[name]
        to_exact["hf"] = max(to_exact["hf"], ((g - ref).norm() / ref.norm()).item())
        to_exact["llamac"] = max(to_exact["llamac"], ((got - ref).norm() / ref.norm()).item())
    ok = loss_err <= 0.02 and worst <= 2e-2 and len(ours) == STEPS
    print(f"{case}: loss {hf_losses[0]:.4f}->{hf_losses[-1]:.4f} (HF) vs {ours[0]:.4f}->{ours[-1]:.4f} "
          f"(llamac); max loss rel err {loss_err:.2e}; max grad rel err {worst:.2e} ({worst_name}); "
          f"max grad rel err to f32: HF bf16 {to_exact['hf']:.2e}, llamac {to_exact['llamac']:.2e} "
          f"{'OK' if ok else 'FAILED'}", flush=True)
    return ok


if __name__ == "__main__":
    llamac_run, packages, configs, out_root = sys.argv[1:5]
    results = [run_case(llamac_run, packages, configs, out_root, c) for c in sys.argv[5:]]
    print("PARITY OK" if all(results) else "PARITY FAILED")
    sys.exit(0 if all(results) else 1)
