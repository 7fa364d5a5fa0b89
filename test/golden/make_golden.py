"""Makes the HF-parity golden data: Hugging Face transformers in float64 on the CPU.

For each case (a Llama 2-style MHA model, a Llama 3-style GQA model with llama3 rope
scaling, a tied-embedding MQA model with an explicit head_dim) it writes, under OUTDIR/CASE/:
  config.json        the model config (transformers' own save_pretrained spelling)
  model.safetensors  initial weights, F32 (exact in both float32 and float64)
  data.jsonl         12 token rows: full, truncated, padded, prompt-masked, sparse-masked, tiny
  grads.safetensors  step-1 gradients, F64, HF parameter names (tied: one embedding tensor)
  final.safetensors  weights after 3 torch.optim.AdamW steps, F64
  golden.json        per-step losses, the run's settings and library versions

llamac reads batches the same way: rows in file order, BATCH rows per step, each truncated to
SEQ tokens and right-padded (ids with 0, labels with -100). No attention mask is passed:
padding is on the right, so causal attention never lets a real token see it.

Usage: python3 make_golden.py OUTDIR   (needs torch, transformers, safetensors)
"""
import json
import os
import random
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

CASES = {
    "llama2-mha": dict(vocab_size=128, hidden_size=32, intermediate_size=88,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                       tie_word_embeddings=False),
    # head_dim 16, theta 5e5, original context 64: the three llama3 frequency bands
    # (kept, interpolated, divided by factor) all occur.
    "llama3-gqa": dict(vocab_size=160, hidden_size=64, intermediate_size=96,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=500000.0,
                       rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 64},
                       tie_word_embeddings=False),
    "tied-mqa": dict(vocab_size=96, hidden_size=48, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                     head_dim=8, max_position_embeddings=64, rms_norm_eps=1e-6,
                     rope_theta=10000.0, tie_word_embeddings=True),
}
BATCH, SEQ, STEPS = 4, 16, 3
LR, WEIGHT_DECAY, BETAS, EPS = 1e-3, 0.01, (0.9, 0.999), 1e-8


def make_rows(vocab, rng):
    """Twelve rows, two of each kind."""
    rows = []
    for i in range(12):
        kind = i % 6
        length = {0: SEQ, 1: SEQ + 7, 2: 7, 3: 14, 4: SEQ, 5: 2}[kind]
        ids = [rng.randrange(vocab) for _ in range(length)]
        row = {"input_ids": ids}
        if kind == 3:  # prompt masked, completion trained
            row["labels"] = [-100] * 6 + ids[6:]
        elif kind == 4:  # scattered masking
            row["labels"] = [t if rng.random() > 0.3 else -100 for t in ids]
        rows.append(row)
    return rows


def batch(rows, step):
    ids = torch.zeros(BATCH, SEQ, dtype=torch.long)
    labels = torch.full((BATCH, SEQ), -100, dtype=torch.long)
    for b in range(BATCH):
        row = rows[(step * BATCH + b) % len(rows)]
        n = min(len(row["input_ids"]), SEQ)
        ids[b, :n] = torch.tensor(row["input_ids"][:n])
        labels[b, :n] = torch.tensor(row.get("labels", row["input_ids"])[:n])
    return ids, labels


def make_case(name, fields, outdir):
    os.makedirs(outdir, exist_ok=True)
    config = LlamaConfig(**fields, attn_implementation="eager", use_cache=False)
    torch.manual_seed(len(name))
    model = LlamaForCausalLM(config)
    # Weights well away from the init scale, so every term of the backward matters;
    # norm weights away from 1. Rounded to float32 so both sides start identical.
    weights = {}
    for pname, p in model.named_parameters():
        if pname.endswith("norm.weight"):
            w = 1.0 + 0.2 * torch.randn(p.shape)
        else:
            w = 0.15 * torch.randn(p.shape)
        weights[pname] = w.float().contiguous()
    model.save_pretrained(outdir, safe_serialization=True)  # config.json spelling
    save_file(weights, os.path.join(outdir, "model.safetensors"), metadata={"format": "pt"})

    model = model.double()
    missing, unexpected = model.load_state_dict({k: v.double() for k, v in weights.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.train()

    rng = random.Random(len(name) * 7919)
    rows = make_rows(config.vocab_size, rng)
    with open(os.path.join(outdir, "data.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")

    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS,
                            weight_decay=WEIGHT_DECAY, foreach=False)
    losses = []
    for step in range(STEPS):
        ids, labels = batch(rows, step)
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        if step == 0:
            grads = {n: p.grad.detach().clone().contiguous() for n, p in model.named_parameters()}
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    final = {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}
    save_file(grads, os.path.join(outdir, "grads.safetensors"))
    save_file(final, os.path.join(outdir, "final.safetensors"))
    with open(os.path.join(outdir, "golden.json"), "w") as f:
        json.dump(dict(losses=losses, batch=BATCH, seq=SEQ, steps=STEPS, lr=LR,
                       weight_decay=WEIGHT_DECAY, betas=list(BETAS), eps=EPS,
                       dtype="float64", torch=torch.__version__,
                       transformers=transformers.__version__), f, indent=1)
    print(name, "losses", losses)


if __name__ == "__main__":
    torch.set_default_dtype(torch.float32)
    out = sys.argv[1]
    for name, fields in CASES.items():
        make_case(name, fields, os.path.join(out, name))
