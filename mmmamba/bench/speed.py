"""Prefill and next-token latency and memory: teacher (attention + KV cache) vs linear vs hybrid.

Random weights at a chosen width; batch 1; CUDA events after warm-up. Run on a GPU:
    python -m mmmamba.bench.speed --layers 8 --contexts 4096 16384 32768 --json OUT.json
Reports per model and context: prefill seconds (chunked), decode ms/token (eager, and CUDA
graph for the all-Mamba model), cache bytes, peak memory, and the floor (bytes over bandwidth).
"""

from __future__ import annotations

import argparse
import json

import torch

from ..convert import convert_to_mamba
from ..infer import prefill
from ..models import Decoder, DecoderConfig
from .timing import cuda_time_ms, device_bandwidth


def build(layers: int, hidden: int, heads: int, kv_heads: int, mlp: int, max_position: int) -> Decoder:
    cfg = DecoderConfig(
        vocab_size=32000,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=hidden // heads,
        intermediate_size=mlp,
        rope_theta=1e6,
        max_position=max_position,
        mamba={"chunk_size": 128},
    )
    return Decoder(cfg)


def cache_bytes(cache) -> int:
    return sum(b.numel() * b.element_size() for c in cache for b in c.buffers())


def bench_model(name, model, context, decode_steps, prefill_chunk, graph: bool) -> dict:
    dev = "cuda"
    ids = torch.randint(0, 32000, (1, context), device=dev)
    mask = torch.ones(1, context + decode_steps + 64, dtype=torch.long, device=dev)
    torch.cuda.reset_peak_memory_stats()
    cache = model.make_cache(1, context + decode_steps + 64)
    embeds = model.embed(ids)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    logits = prefill(model, embeds, mask[:, :context], cache, prefill_chunk)
    end.record()
    torch.cuda.synchronize()
    prefill_s = start.elapsed_time(end) / 1e3
    token = logits.argmax(-1)
    pos = [context]

    def step():
        pos[0] += 1
        with torch.no_grad():
            return model(token[:, None], attention_mask=mask[:, : pos[0]], cache=cache).logits

    row = {"model": name, "context": context, "prefill_s": prefill_s, "cache_bytes": cache_bytes(cache)}
    row["decode_ms"] = cuda_time_ms(step, warmup=3, iters=decode_steps)
    if graph:
        from ..infer.cuda_graph import GraphedDecodeStep

        g = GraphedDecodeStep(model, cache, 1)
        saved = [(c.conv.clone(), c.ssm.clone()) for c in cache]
        eager = step()[:, -1]
        for c, (conv, ssm) in zip(cache, saved):  # replay the same step from the same state
            c.conv.copy_(conv)
            c.ssm.copy_(ssm)
        row["graph_max_abs_diff"] = float((g(token).float() - eager.float()).abs().max())
        row["decode_graph_ms"] = cuda_time_ms(lambda: g(token), warmup=3, iters=decode_steps)
    row["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--mlp", type=int, default=8192)
    p.add_argument("--contexts", type=int, nargs="+", default=[4096, 16384, 32768])
    p.add_argument("--decode-steps", type=int, default=50)
    p.add_argument("--prefill-chunk", type=int, default=8192)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    max_pos = max(args.contexts) + args.decode_steps + 128
    teacher = build(args.layers, args.hidden, args.heads, args.kv_heads, args.mlp, max_pos)
    models = {
        "teacher": teacher,
        "linear": convert_to_mamba(teacher, []),
        "hybrid_every4": convert_to_mamba(teacher, list(range(0, args.layers, 4))),
    }
    weight_bytes = {}
    for name, m in models.items():
        models[name] = m.to("cuda", torch.bfloat16).eval()
        weight_bytes[name] = sum(t.numel() * t.element_size() for t in m.parameters())
    bw = device_bandwidth()
    rows = []
    for context in args.contexts:
        for name, m in models.items():
            row = bench_model(name, m, context, args.decode_steps, args.prefill_chunk, graph=name == "linear")
            row["floor_ms"] = (weight_bytes[name] + row["cache_bytes"]) / bw * 1e3
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        f"\n{torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s, {args.layers} layers, "
        f"hidden {args.hidden}, heads {args.heads}/{args.kv_heads}, bf16, batch 1"
    )
    print(
        f"{'model':<14}{'context':>8}{'prefill s':>11}{'decode ms':>11}{'graph ms':>10}{'floor ms':>10}"
        f"{'cache GB':>10}{'peak GB':>9}"
    )
    for r in rows:
        g = f"{r['decode_graph_ms']:.3f}" if "decode_graph_ms" in r else "-"
        print(
            f"{r['model']:<14}{r['context']:>8}{r['prefill_s']:>11.3f}{r['decode_ms']:>11.3f}{g:>10}"
            f"{r['floor_ms']:>10.3f}{r['cache_bytes'] / 1e9:>10.3f}{r['peak_gb']:>9.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": torch.cuda.get_device_name(), "bandwidth": bw, "args": vars(args), "rows": rows}, f, indent=2
            )


if __name__ == "__main__":
    main()
