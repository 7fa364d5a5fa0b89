"""Makes the golden data of llamac's training features: HF transformers + torch in float64.

Reuses the llama2-mha case of make_golden.py (its config, initial weights and data.jsonl under
test/golden/llama2-mha/, next to this script) and trains it the way the Hugging Face Trainer
(transformers >= 4.46) does, in five cases:

  grad-accum     --grad-accum 2 with batch 2: micro-batches of unequal counted tokens, the
                 window's loss = sum over its counted tokens / their number (num_items_in_batch)
  clip           batch 4, clip_grad_norm_ to 0.5 (asserted to clip on every step)
  linear-warmup  batch 4, get_linear_schedule_with_warmup, 2 warmup steps over 6 steps
  cosine         batch 4, get_cosine_schedule_with_warmup (num_cycles 0.5), 6 steps
  pack           llamac's --pack: --grad-accum 2 of 2 sequences of 32 tokens, each holding the
                 rows (in file order) that fit, as llamac packs them; HF trains each micro-batch
                 as DataCollatorWithFlattening lays its rows out (one row, position_ids
                 restarting at 0 per row, the first label of each row -100), with position_ids
                 keeping attention within each row (checked against the rows run one by one)

For each it writes, under OUTDIR/CASE/:
  golden.json        the run's settings, and per optimizer step: the logged loss (the window's
                     token-weighted mean), the learning rate the optimizer used, the gradient norm
                     before clipping, num_items_in_batch; library versions
  final.safetensors  the weights after the last step, F64, Hugging Face names

What it emulates of Trainer.train(), step by step (training_step, _inner_training_loop):
  - the batches of one optimizer step are fetched first and num_items_in_batch counted over all
    of them as the labels the shifted loss predicts (labels[..., 1:] != -100, as
    Trainer._get_num_items_in_batch does);
  - each micro-batch runs model(input_ids, labels, num_items_in_batch=N): its loss is the sum of
    its token losses / N, and backward() accumulates the gradients; the logged loss of the step
    is the sum of the micro-batch losses;
  - clip_grad_norm_(params, max_grad_norm) when max_grad_norm > 0 (the norm is recorded even
    when clipping is off), then optimizer.step(), scheduler.step(), zero_grad().
Batches are what llamac reads: rows in file order, BATCH rows per micro-batch, consecutive
micro-batches take consecutive rows (wrapping around the file), each row truncated to SEQ tokens
and right-padded (ids 0, labels -100); with pack, what llamac's packer takes (pack_sequences). Like make_golden.py, AdamW is torch.optim.AdamW over every
parameter with weight decay 0.01 (llamac decays every tensor; the Trainer's default optimizer
would exempt norm weights), foreach off.

Usage: python3 test/golden/make_golden_training.py test/golden/training [CASE...]
       (needs torch, transformers, safetensors; runs on the CPU in a few seconds; the pack
       case needs a transformers whose eager attention masks packed rows by position_ids,
       5.x does)
"""
import json
import math
import os
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import (DataCollatorWithFlattening, LlamaConfig, LlamaForCausalLM,
                          get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_golden import CASES as MODEL_CASES  # noqa: E402  (the llama2-mha model fields)

SOURCE = "llama2-mha"
SEQ = 16
LR, WEIGHT_DECAY, BETAS, EPS = 1e-3, 0.01, (0.9, 0.999), 1e-8

CASES = {
    "grad-accum": dict(batch=2, grad_accum=2, steps=3, lr_schedule="constant",
                       warmup_steps=0, max_grad_norm=0.0),
    "clip": dict(batch=4, grad_accum=1, steps=3, lr_schedule="constant",
                 warmup_steps=0, max_grad_norm=0.5),
    "linear-warmup": dict(batch=4, grad_accum=1, steps=6, lr_schedule="linear",
                          warmup_steps=2, max_grad_norm=0.0),
    "cosine": dict(batch=4, grad_accum=1, steps=6, lr_schedule="cosine",
                   warmup_steps=0, max_grad_norm=0.0),
    "pack": dict(batch=2, grad_accum=2, steps=3, lr_schedule="constant",
                 warmup_steps=0, max_grad_norm=1.0, seq=32, pack=True),
}
SCHEDULES = {
    "constant": lambda opt, warmup, total: get_constant_schedule_with_warmup(opt, warmup),
    "linear": get_linear_schedule_with_warmup,
    "cosine": get_cosine_schedule_with_warmup,  # num_cycles defaults to 0.5
}


def load_model():
    """The llama2-mha model of make_golden.py in float64, with its saved initial weights."""
    source = os.path.join(HERE, SOURCE)
    fields = MODEL_CASES[SOURCE]
    with open(os.path.join(source, "config.json")) as f:
        saved = json.load(f)
    # The shapes must agree; rope settings may be spelled differently (transformers 5 keeps
    # rope_theta under rope_parameters).
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "tie_word_embeddings"):
        assert saved.get(key) == fields[key], (key, saved.get(key), fields[key])
    config = LlamaConfig(**fields, attn_implementation="eager", use_cache=False)
    model = LlamaForCausalLM(config)
    weights = load_file(os.path.join(source, "model.safetensors"))
    model = model.double()
    missing, unexpected = model.load_state_dict({k: v.double() for k, v in weights.items()},
                                                strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    model.train()
    with open(os.path.join(source, "data.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return model, rows


def micro_batch(rows, index, batch):
    """Micro-batch number `index`: rows index*batch ... (index+1)*batch - 1, wrapping around."""
    ids = torch.zeros(batch, SEQ, dtype=torch.long)
    labels = torch.full((batch, SEQ), -100, dtype=torch.long)
    for b in range(batch):
        row = rows[(index * batch + b) % len(rows)]
        n = min(len(row["input_ids"]), SEQ)
        ids[b, :n] = torch.tensor(row["input_ids"][:n])
        labels[b, :n] = torch.tensor(row.get("labels", row["input_ids"])[:n])
    return ids, labels


def pack_sequences(rows, position, batch, seq):
    """llamac's packBatch: `batch` sequences of `seq` tokens, each taking the rows from
    `position` on (in file order, wrapping around) while they fit, every row truncated to `seq`;
    a row that does not fit starts the next sequence, and after the last one stays unread.
    Returns the rows of each sequence and the position after them."""
    sequences = []
    for _ in range(batch):
        used, members = 0, []
        while used < seq:
            row = rows[position % len(rows)]
            n = min(len(row["input_ids"]), seq)
            if used > 0 and used + n > seq:
                break
            members.append(row)
            position += 1
            used += n
        sequences.append(members)
    return sequences, position


def packed_micro_batch(rows, position, batch, seq):
    """The rows of one packed micro-batch as DataCollatorWithFlattening lays them out: one row,
    position_ids restarting at 0 per data row, labels -100 at each row's first token."""
    sequences, position = pack_sequences(rows, position, batch, seq)
    features = [{"input_ids": r["input_ids"][:seq], "labels": r.get("labels", r["input_ids"])[:seq]}
                for members in sequences for r in members]
    flat = DataCollatorWithFlattening(return_tensors="pt")(features)
    return flat["input_ids"], flat["labels"], flat["position_ids"], features, position


def check_rows_apart(model, ids, labels, positions, features):
    """The packed micro-batch's summed token loss must equal its rows' run one by one: HF kept
    attention within each row (and RoPE restarted) by position_ids."""
    with torch.no_grad():
        count = int(labels[..., 1:].ne(-100).sum())
        packed = model(input_ids=ids, labels=labels, position_ids=positions).loss.item() * count
        apart = 0.0
        for feature in features:
            row_ids = torch.tensor([feature["input_ids"]])
            row_labels = torch.tensor([feature["labels"]])
            n = int(row_labels[..., 1:].ne(-100).sum())
            if n:
                apart += model(input_ids=row_ids, labels=row_labels).loss.item() * n
    # transformers keeps RoPE's inv_freq and angles in f32 even in a float64 model, and a
    # packed row's angles come from the packed position_ids tensor: measured 1.7e-8 apart
    # (transformers 5.17). A row that attended to another would differ by ~1e-2.
    assert abs(packed - apart) <= 1e-6 * abs(apart), ("packed rows see each other", packed, apart)


def total_norm(parameters):
    """clip_grad_norm_'s total_norm: the 2-norm of the per-tensor 2-norms."""
    norms = [torch.linalg.vector_norm(p.grad) for p in parameters if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)).item()


def make_case(name, settings, outdir):
    os.makedirs(outdir, exist_ok=True)
    model, rows = load_model()
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY,
                            foreach=False)
    steps, accum, batch = settings["steps"], settings["grad_accum"], settings["batch"]
    scheduler = SCHEDULES[settings["lr_schedule"]](opt, settings["warmup_steps"], steps)
    max_norm = settings["max_grad_norm"]
    seq, pack = settings.get("seq", SEQ), settings.get("pack", False)

    losses, lrs, grad_norms, items = [], [], [], []
    position = 0
    for step in range(steps):
        micro = []
        for i in range(accum):
            if pack:
                ids, labels, positions, features, position = packed_micro_batch(
                    rows, position, batch, seq)
                check_rows_apart(model, ids, labels, positions, features)
                micro.append((ids, labels, positions))
            else:
                micro.append(micro_batch(rows, step * accum + i, batch) + (None,))
        num_items = sum(int(labels[..., 1:].ne(-100).sum()) for _, labels, _ in micro)
        lrs.append(opt.param_groups[0]["lr"])
        logged = 0.0
        for ids, labels, positions in micro:
            out = model(input_ids=ids, labels=labels, position_ids=positions,
                        num_items_in_batch=num_items)
            # The loss must be this micro-batch's token sum over the window's count: its mean
            # loss weighted by count / num_items. Checked, so that a transformers version that
            # ignored num_items_in_batch could not make silently wrong golden data. (The loss
            # is computed from float32 logits, ForCausalLMLoss's upcast, hence 1e-6.)
            with torch.no_grad():
                mean = model(input_ids=ids, labels=labels, position_ids=positions).loss.item()
            count = int(labels[..., 1:].ne(-100).sum())
            expected = mean * count / num_items
            assert abs(out.loss.item() - expected) <= 1e-6 * max(1.0, abs(expected)), (
                name, step, out.loss.item(), expected)
            out.loss.backward()
            logged += out.loss.item()
        norm = total_norm(params)
        if max_norm > 0:
            clipped = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False).item()
            assert math.isclose(clipped, norm, rel_tol=1e-12), (clipped, norm)
        opt.step()
        scheduler.step()
        opt.zero_grad(set_to_none=True)
        losses.append(logged)
        grad_norms.append(norm)
        items.append(num_items)

    if name == "clip":
        assert min(grad_norms) > max_norm, f"clip case does not clip: norms {grad_norms}"
    final = {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}
    save_file(final, os.path.join(outdir, "final.safetensors"))
    golden = dict(source=SOURCE, losses=losses, lrs=lrs, grad_norms=grad_norms,
                  num_items_in_batch=items, lr=LR, weight_decay=WEIGHT_DECAY,
                  betas=list(BETAS), eps=EPS, dtype="float64", torch=torch.__version__,
                  transformers=transformers.__version__,
                  **dict(settings, seq=seq, pack=pack))
    with open(os.path.join(outdir, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
    print(f"{name}: losses {losses}\n  lrs {lrs}\n  grad norms {grad_norms}\n"
          f"  num_items_in_batch {items}")


if __name__ == "__main__":
    if len(sys.argv) < 2 or any(name not in CASES for name in sys.argv[2:]):
        sys.exit(__doc__)
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    for case_name, case_settings in CASES.items():
        if len(sys.argv) == 2 or case_name in sys.argv[2:]:
            make_case(case_name, case_settings, os.path.join(sys.argv[1], case_name))
