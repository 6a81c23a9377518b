"""Long-context speed at HoVLE scale: the Hugging Face teacher, our teacher, linear and hybrid students.

Random bf16 weights at HoVLE's shapes (32 layers, hidden 2048, 16/8 heads of 128, MLP 8192, vocab
92553). Each model is built, measured at every context and freed before the next one is built, so
peak memory is one model's. Per (model, context): prefill seconds, next-token ms (median of CUDA-event
timed steps after warm-up), tokens/s over ``--new-tokens`` greedy tokens, peak GB, and the floor
(bytes a step must read over the measured copy bandwidth). ``--batch-context`` adds decode
throughput at the largest batch that fits (doubling until out of memory, capped by ``--max-batch``);
those rows start from synthetic cache contents, since a decode step's cost does not depend on them.
``--train`` adds distillation tokens/s for each stage. Writes ``speed.json`` (+ a table and a plot with
``mmmamba bench report``). Run on a GPU:

    mmmamba bench speed --out runs/bench --models linear hybrid teacher hf
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch

from ..convert import convert_to_mamba
from ..infer.decode_step import DecodeStep
from ..infer.generate import prefill, prefill_ids
from ..io import write_json_atomic
from ..models import Decoder, DecoderConfig
from .timing import cuda_time_ms, device_bandwidth
from .usage import bench_parser

MODELS = ("linear", "hybrid", "teacher", "hf")


def add_shape_arguments(p, layers: int, hidden: int, heads: int, kv_heads: int, mlp: int, vocab: int) -> None:
    """The decoder shape ``hovle_config`` reads (--layers --hidden --heads --kv-heads --mlp --vocab), with a
    script's own defaults."""
    p.add_argument("--layers", type=int, default=layers, help="decoder layers")
    p.add_argument("--hidden", type=int, default=hidden, help="hidden size")
    p.add_argument("--heads", type=int, default=heads, help="query heads")
    p.add_argument("--kv-heads", type=int, default=kv_heads, help="key/value heads")
    p.add_argument("--mlp", type=int, default=mlp, help="MLP intermediate size")
    p.add_argument("--vocab", type=int, default=vocab, help="vocabulary size")


def hovle_config(args, max_position: int) -> DecoderConfig:
    return DecoderConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        head_dim=args.hidden // args.heads,
        intermediate_size=args.mlp,
        rope_theta=1e6,
        max_position=max_position,
        mamba={"chunk_size": 64, "ssd_backend": args.ssd_backend},
    )


def build_ours(name: str, args, max_position: int) -> Decoder:
    """Random weights, made on the GPU in bf16 (the teacher first, converted when a student is asked for)."""
    with torch.device("cuda"):
        teacher = Decoder(hovle_config(args, max_position))
    teacher = teacher.to(torch.bfloat16)
    if name == "teacher":
        model = teacher
    else:
        keep = [] if name == "linear" else list(range(0, args.layers, 4))
        model = convert_to_mamba(teacher, keep).to("cuda", torch.bfloat16)
        del teacher
    model.eval().requires_grad_(False)
    model.fuse_projections()
    model.set_backends(mamba_decode=args.decode_backend, prefill_mode=args.prefill_mode)
    return model


def build_hf(args, max_position: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        intermediate_size=args.mlp,
        rope_theta=1e6,
        max_position_embeddings=max_position,
        attn_implementation="sdpa",
    )
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    return model.eval().requires_grad_(False)


def weight_bytes_read(model) -> int:
    """Bytes a decode step reads: every weight but the input embedding table (one row of it)."""
    emb = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else model.embed_tokens.weight
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    tied = any(p is emb for p in model.lm_head.parameters())
    return total - (0 if tied else emb.numel() * emb.element_size())


def kv_bytes(cache) -> int:
    return sum(
        b.numel() * b.element_size() for n, b in cache.named_buffers() if n.endswith((".k", ".v", ".ssm", ".conv"))
    )


def tokens_per_s(step, token: torch.Tensor, n: int) -> float:
    """Greedy generation of ``n`` tokens: each step's argmax feeds the next."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        token = step(token).argmax(-1)
    torch.cuda.synchronize()
    return n * token.shape[0] / (time.perf_counter() - t0)


def timed_prefills(prepare, run, repeats: int):
    """``run(prepare())`` ``repeats`` times, each timed without its ``prepare`` (a fresh cache); the last
    ``run``'s result and {prefill_s: the fastest, prefill_first_s: the first}. The first prefill at a new length
    also pays one-time costs (allocator growth, library heuristics, compiles). The previous result is freed
    before the next ``prepare``, so one cache is held at a time."""
    seconds = []
    for _ in range(repeats):
        out = state = None
        state = prepare()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = run(state)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    return out, {"prefill_s": min(seconds), "prefill_first_s": seconds[0]}


def measure_ours(model: Decoder, context: int, args, decode: str) -> dict:
    torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, args.vocab, (1, context), device="cuda")
    mask = torch.ones(1, context, dtype=torch.long, device="cuda")
    chunk = min(args.prefill_chunk, context)
    (cache, logits), row = timed_prefills(
        lambda: model.make_cache(1, context + args.new_tokens + args.warmup + args.decode_steps + 16),
        lambda cache: (cache, prefill_ids(model, ids, None, mask, cache, chunk)),
        args.prefill_repeats,
    )
    row.update(cache_bytes=kv_bytes(cache), prefill_chunk=chunk)
    step = DecodeStep(model, cache, decode)
    token = logits.argmax(-1)
    if args.profile:
        profile(model, cache, step, token, chunk)
    row["decode_ms"] = cuda_time_ms(lambda: step(token), warmup=args.warmup, iters=args.decode_steps)
    row["tokens_per_s"] = tokens_per_s(step, token, args.new_tokens)
    row["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return row


def profile(model: Decoder, cache, step, token, chunk: int) -> None:
    """Print the top kernels of one prefill chunk and of 20 decode steps (where the time goes)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    ids = torch.randint(0, 1000, (1, chunk), device="cuda")  # chunk ≤ the context, so within max_position
    with torch.no_grad(), torch_profile(activities=[ProfilerActivity.CUDA]) as prof:  # no_grad: --prefill-mode holds
        probe = model.make_cache(1, chunk + 8)
        model(ids, cache=probe, logits_to_keep=1)
        torch.cuda.synchronize()
    print(f"-- prefill of {chunk} tokens", prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
    saved = cache.snapshot()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            step(token)
        torch.cuda.synchronize()
    cache.restore(saved)
    for c in cache:
        c.length -= 20
    print("-- 20 decode steps", prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))


def measure_hf(model, context: int, args) -> dict:
    torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, args.vocab, (1, context), device="cuda")
    with torch.no_grad():
        out, row = timed_prefills(
            lambda: None, lambda _: model(ids, use_cache=True, logits_to_keep=1), args.prefill_repeats
        )
    row["prefill_chunk"] = context  # HF: the whole prompt at once
    cache = out.past_key_values
    token = out.logits[:, -1].argmax(-1)

    def step(tok):
        with torch.no_grad():
            return model(tok[:, None], past_key_values=cache, use_cache=True).logits[:, -1]

    row["decode_ms"] = cuda_time_ms(lambda: step(token), warmup=args.warmup, iters=args.decode_steps)
    row["tokens_per_s"] = tokens_per_s(step, token, args.new_tokens)
    row["cache_bytes"] = hf_cache_bytes(args, context)
    row["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return row


def warm_up_prefill(model, name: str, args) -> None:
    """An untimed prefill of two chunks of the timed size (the second one over a past) and a short tail:
    kernel autotuning (fla, cuBLAS, cuDNN) keyed on those shapes, and ``--prefill-mode compile``'s compiles
    (the tail's new length makes them shape-dynamic, so a timed tail of any length compiles nothing), are
    not a prefill cost."""
    chunk = min(args.prefill_chunk, *args.contexts)
    ids = torch.randint(0, args.vocab, (1, min(2 * chunk + 3, max(args.contexts))), device="cuda")  # ≤ max_position
    with torch.no_grad():
        if name == "hf":
            model(ids[:, :chunk], logits_to_keep=1)
        else:
            prefill(model, model.embed(ids), torch.ones_like(ids), model.make_cache(1, ids.shape[1] + 1), chunk)
    torch.cuda.synchronize()


def synthetic_cache(model: Decoder, batch: int, context: int):
    """A cache as if ``context`` tokens had been prefilled (random contents; the step's cost is the same)."""
    cache = model.make_cache(batch, context + 64)
    for c in cache:
        for b in c.buffers():
            b.normal_(0, 0.02)
        c.length = context
    cache.key_valid[:, :context] = True
    cache.slot.fill_(context)
    cache.position.fill_(context)
    return cache


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA allocation failures: PyTorch's own, and the ones cuBLAS and Triton raise as RuntimeError."""
    text = str(e)
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text


def batch_candidates(row_bytes: int, free_bytes: int, max_batch: int, margin: float = 0.9) -> list[int]:
    """Batches to try, largest first: what fits ``margin`` of the free memory at ``row_bytes`` a row, then
    the powers of two below it."""
    fit = max(1, min(max_batch, int(free_bytes * margin) // max(row_bytes, 1)))
    return [fit] + [1 << i for i in range(fit.bit_length() - 1, -1, -1) if 1 << i < fit]


def largest_batch(time_step_ms, candidates: list[int]) -> dict:
    """The first batch of ``candidates`` that runs, with its step time; an out-of-memory moves to the next."""
    tried = []
    for batch in candidates:
        try:
            ms = time_step_ms(batch)
            return {"batch": batch, "step_ms": ms, "tokens_per_s": batch / ms * 1e3, "out_of_memory_at": tried}
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            tried.append(batch)
        finally:
            gc.collect()
            torch.cuda.empty_cache()
    return {"error": f"out of memory at every batch tried: {tried}"}


def batch_step_ms_ours(model: Decoder, context: int, decode: str, batch: int) -> float:
    step = DecodeStep(model, synthetic_cache(model, batch, context), decode)
    return cuda_time_ms(partial(step, torch.zeros(batch, dtype=torch.long, device="cuda")), warmup=2, iters=10)


@torch.no_grad()
def hf_fixed_context_step(model, token, cache, context: int) -> None:
    model(token, past_key_values=cache, use_cache=True)
    for layer in cache.layers:  # keep the context fixed: drop the appended token
        layer.keys, layer.values = layer.keys[:, :, :context], layer.values[:, :, :context]


def batch_step_ms_hf(model, context: int, args, batch: int) -> float:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    for i in range(args.layers):  # (batch, kv heads, context, head_dim) random keys and values
        k = torch.randn(batch, args.kv_heads, context, args.hidden // args.heads, device="cuda", dtype=torch.bfloat16)
        cache.update(k, torch.randn_like(k), i)
    token = torch.zeros(batch, 1, dtype=torch.long, device="cuda")
    return cuda_time_ms(partial(hf_fixed_context_step, model, token, cache, context), warmup=2, iters=5)


def train_step(stage, teacher, student, batch, opt) -> None:
    from ..distill.stages import stage_loss

    loss = stage_loss(stage, teacher, student, batch)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def train_throughput(args, tokens_per_batch: int, seq_len: int) -> list[dict]:
    """Distillation tokens/s per stage at HoVLE scale: bf16 weights and activations, AdamW, the real stage losses."""
    from ..data.conversations import Batch
    from ..distill.stages import STAGES, select_trainable

    max_position = seq_len + 8
    with torch.device("cuda"):
        teacher = Decoder(hovle_config(args, max_position)).to(torch.bfloat16).eval().requires_grad_(False)
    student = convert_to_mamba(teacher, []).to("cuda", torch.bfloat16)
    b = max(1, tokens_per_batch // seq_len)
    ids = torch.randint(0, args.vocab, (b, seq_len), device="cuda")
    ones = torch.ones_like(ids)
    batch = Batch(ids, ones, ones, None)
    rows = []
    for stage_id in (1, 2, 3):
        stage = STAGES[stage_id]
        params = [p for _, p in select_trainable(student, stage)]
        opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
        torch.cuda.reset_peak_memory_stats()
        try:
            ms = cuda_time_ms(partial(train_step, stage, teacher, student, batch, opt), warmup=2, iters=5)
            rows.append(
                {"stage": stage_id, "batch": b, "seq_len": seq_len, "step_ms": ms,
                 "tokens_per_s": b * seq_len / ms * 1e3, "peak_gb": torch.cuda.max_memory_allocated() / 1e9}
            )  # fmt: skip
        except torch.OutOfMemoryError as e:
            rows.append({"stage": stage_id, "batch": b, "seq_len": seq_len, "error": f"out of memory: {e}"[:200]})
        del opt
        gc.collect()
        torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), flush=True)
    return rows


def parse_args(argv=None):
    p = bench_parser("speed", __doc__)
    p.add_argument("--out", required=True, help="folder for speed.json")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="models measured, in order")
    p.add_argument(
        "--contexts", type=int, nargs="+", default=[4096, 16384, 32768, 65536, 103424, 131072], help="prompt lengths"
    )
    add_shape_arguments(p, layers=32, hidden=2048, heads=16, kv_heads=8, mlp=8192, vocab=92553)  # HoVLE's
    p.add_argument("--new-tokens", type=int, default=256, help="tokens generated for the tokens/s column")
    p.add_argument("--decode-steps", type=int, default=30, help="timed decode steps (median)")
    p.add_argument("--warmup", type=int, default=5, help="untimed decode steps first")
    p.add_argument(
        "--prefill-repeats", type=int, default=2,
        help="prefills timed per row; prefill_s is the fastest, prefill_first_s the first (one-time costs in it)",
    )  # fmt: skip
    p.add_argument(
        "--prefill-chunk", type=int, default=8192, help="prefill in chunks of N tokens (at most the context)"
    )
    p.add_argument("--decode", default="compile", choices=["eager", "graph", "compile"], help="our decode step")
    p.add_argument("--ssd-backend", default="auto", choices=["auto", "torch", "fla"], help="the Mamba-2 scan")
    p.add_argument(
        "--decode-backend", default="auto", choices=["auto", "torch", "triton"],
        help="the Mamba-2 decode step: auto = the fused Triton kernel on CUDA when installed",
    )  # fmt: skip
    p.add_argument(
        "--prefill-mode", default="eager", choices=["eager", "compile"],
        help="our prefill: the layers as they are, or their elementwise work compiled (ops.regions)",
    )  # fmt: skip
    p.add_argument("--batch-context", type=int, default=0, help="also find the largest batch at this context")
    p.add_argument("--max-batch", type=int, default=256, help="largest batch the batch search tries")
    p.add_argument(
        "--train",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also measure distillation tokens/s per stage",
    )
    p.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure each model in a process of its own (a crash loses only its rows)",
    )
    p.add_argument("--profile", action="store_true", help="print the top CUDA kernels of prefill and decode")
    p.add_argument("--train-tokens", type=int, default=16384, help="tokens per training batch")
    p.add_argument("--train-seq", type=int, default=2048, help="sequence length of --train")
    args = p.parse_args(argv)
    if args.prefill_repeats < 1:
        p.error(f"--prefill-repeats {args.prefill_repeats}: give 1 or more")
    return args


def hf_cache_bytes(args, context: int) -> int:
    """One row of transformers' KV cache at ``context``: K and V, bf16, every layer."""
    return 2 * args.layers * context * args.kv_heads * (args.hidden // args.heads) * 2


def batch_row_bytes(model, name: str, context: int, args) -> int:
    """Cache bytes of one row at ``context``: what each more row of the batch costs."""
    if name == "hf":
        return hf_cache_bytes(args, context)
    return kv_bytes(model.make_cache(1, context + 64))


def measure_model(name: str, args, result: dict, out: Path) -> None:
    """Every context of one model, then its largest batch; rows are appended to ``result`` as they come."""
    bw = result["bandwidth"]
    max_position = max(args.contexts + [args.batch_context]) + args.new_tokens + args.decode_steps + args.warmup + 128
    model = build_hf(args, max_position) if name == "hf" else build_ours(name, args, max_position)
    weights = weight_bytes_read(model)
    warm_up_prefill(model, name, args)
    for context in args.contexts:
        try:
            row = measure_hf(model, context, args) if name == "hf" else measure_ours(model, context, args, args.decode)
        except Exception as e:  # noqa: BLE001 — one failed row must not lose the others
            row = {"error": f"{type(e).__name__}: {e}"[:300]}
        row.update(model=name, context=context, weight_bytes=weights)
        if "cache_bytes" in row:
            row["floor_ms"] = (weights + row["cache_bytes"]) / bw * 1e3
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        write_json_atomic(out / "speed.json", result)  # partial results survive a kill
        gc.collect()
        torch.cuda.empty_cache()
    if args.batch_context:
        c = args.batch_context
        try:
            row_bytes = batch_row_bytes(model, name, c, args)
            gc.collect()
            torch.cuda.empty_cache()
            candidates = batch_candidates(row_bytes, torch.cuda.mem_get_info()[0], args.max_batch)
            time_step = (
                partial(batch_step_ms_hf, model, c, args)
                if name == "hf"
                else partial(batch_step_ms_ours, model, c, args.decode)
            )
            best = largest_batch(time_step, candidates)
            best["row_bytes"] = row_bytes
            if "batch" in best:
                best["floor_ms"] = (weights + best["batch"] * row_bytes) / bw * 1e3
        except Exception as e:  # noqa: BLE001
            best = {"error": f"{type(e).__name__}: {e}"[:300]}
        best.update(model=name, context=c)
        result["batch"].append(best)
        print(json.dumps(best), flush=True)
    del model
    gc.collect()
    torch.cuda.empty_cache()


def measure_isolated(name: str, argv: list[str], out: Path) -> dict:
    """One model in a process of its own: a sticky CUDA error or a leak there cannot touch the others."""
    part = out / "parts" / name
    cmd = [sys.executable, "-m", "mmmamba.bench.speed", *argv, "--models", name, "--out", str(part),
           "--no-isolate", "--no-train"]  # fmt: skip
    code = subprocess.run(cmd).returncode
    try:
        return json.loads((part / "speed.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {"rows": [{"model": name, "error": f"its process exited with {code} before writing a row"}]}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    result = {"device": torch.cuda.get_device_name(), "bandwidth": device_bandwidth(), "args": vars(args)}
    torch.cuda.empty_cache()  # the copy test's buffers go back before the models are measured
    result.update(torch=torch.__version__, rows=[], batch=[])
    for name in args.models:
        if args.isolate:
            part = measure_isolated(name, argv, out)
            result["rows"] += part.get("rows", [])
            result["batch"] += part.get("batch", [])
            write_json_atomic(out / "speed.json", result)
        else:
            measure_model(name, args, result, out)
    if args.train:
        result["train"] = train_throughput(args, args.train_tokens, args.train_seq)
    write_json_atomic(out / "speed.json", result)
    print(f"wrote {out / 'speed.json'}")


if __name__ == "__main__":
    main()
