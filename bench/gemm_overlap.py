#!/usr/bin/env python3
"""What running each linear layer's wgrad beside its dgrad could save.

A torch-only probe on the GPU machine (issue 4), before the compiler changes
its schedule: the backward GEMMs of a Llama decoder's linear layers (batch x
seq tokens, fused QKV and gate/up shapes, bf16), every layer's dgrad then its
wgrad on one stream, against the same GEMMs with the wgrads on a second
stream (each layer's wgrad forked when its layer starts, all joined at the
end), both captured in a CUDA graph and replayed. The gap is the most that
overlapping the GEMMs' tails (wave quantization, prologues) can give; the
GEMMs alone, no other kernels.

Usage: python3 gemm_overlap.py [llama2-7b|llama3-8b] [--layers N]
Prints one line per schedule and a RESULT json line.
"""

import argparse
import json

import torch

SHAPES = {  # hidden, intermediate, q heads, kv heads, head dim
    "llama2-7b": (4096, 11008, 32, 32, 128),
    "llama3-8b": (4096, 14336, 32, 8, 128),
}


def layer_gemms(tokens, hidden, inter, heads, kv_heads, head_dim, device):
    """Per linear layer (x, dy, w): dgrad dx = dy w, wgrad dw = dyᵀ x."""
    qkv = (heads + 2 * kv_heads) * head_dim
    shapes = [  # (in features, out features)
        (hidden, qkv),  # q/k/v
        (heads * head_dim, hidden),  # o
        (hidden, 2 * inter),  # gate/up
        (inter, hidden),  # down
    ]
    layers = []
    for fan_in, fan_out in shapes:
        x = torch.randn(tokens, fan_in, device=device, dtype=torch.bfloat16)
        dy = torch.randn(tokens, fan_out, device=device, dtype=torch.bfloat16)
        w = torch.randn(fan_out, fan_in, device=device, dtype=torch.bfloat16)
        dx = torch.empty(tokens, fan_in, device=device, dtype=torch.bfloat16)
        dw = torch.empty(fan_out, fan_in, device=device, dtype=torch.bfloat16)
        layers.append((x, dy, w, dx, dw))
    return layers


def backward(layers, num_layers, side):
    """All layers' dgrads and wgrads; wgrads on `side` when given."""
    main = torch.cuda.current_stream()
    for _ in range(num_layers):
        for x, dy, w, dx, dw in reversed(layers):
            if side is not None:
                side.wait_stream(main)
            torch.matmul(dy, w, out=dx)
            with torch.cuda.stream(side if side is not None else main):
                torch.matmul(dy.t(), x, out=dw)
    if side is not None:
        main.wait_stream(side)


def time_graph(fn, replays=20):
    fn()  # warm up (cuBLAS handles, workspaces) outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(3):
        graph.replay()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="llama2-7b",
                        choices=sorted(SHAPES))
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=8 * 256)
    args = parser.parse_args()
    device = torch.device("cuda")
    layers = layer_gemms(args.tokens, *SHAPES[args.model], device)
    side = torch.cuda.Stream()
    serial = time_graph(lambda: backward(layers, args.layers, None))
    overlapped = time_graph(lambda: backward(layers, args.layers, side))
    name = torch.cuda.get_device_name()
    print(f"{args.model} on {name}: backward linear GEMMs, {args.layers} "
          f"layers: one stream {serial:.2f} ms, wgrads on a second stream "
          f"{overlapped:.2f} ms ({serial - overlapped:+.2f} ms)")
    print("RESULT " + json.dumps({
        "model": args.model, "device": name, "serial_ms": serial,
        "overlapped_ms": overlapped}))


if __name__ == "__main__":
    main()
