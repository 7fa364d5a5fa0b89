"""What the GPU checks share (hf_parity.py, fp8_loss.py): the seeded Hugging Face model whose
weights llamac-run starts from, and the llamac-run call. Needs torch, transformers, safetensors
and a CUDA device (the GPU machine).
"""
import json
import subprocess

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM


def hf_model(config_path):
    """The model of CONFIG_PATH (a Hugging Face config.json) as transformers initializes it
    (torch seed 0), in bf16 on the GPU, in train mode, with SDPA attention: (config, model)."""
    config = LlamaConfig(**json.load(open(config_path)))
    config._attn_implementation = "sdpa"
    config.use_cache = False
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.train()
    return config, model


def save_weights(model, config, path):
    """Writes the model's tensors under their Hugging Face names (no lm_head.weight when the
    embeddings are tied), as llamac-run --weights reads them."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if not (config.tie_word_embeddings and k == "lm_head.weight")}
    save_file(state, path)


def run_llamac(case, cmd):
    """Runs llamac-run (CMD): its CompletedProcess, or None after printing why it failed."""
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        print(f"{case}: llamac-run failed ({run.returncode}): {run.stderr.strip()}", flush=True)
        return None
    return run
