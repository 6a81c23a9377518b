"""Profile one distillation step at SmolLM2-135M's shape with random weights: tokens/s of stages 1-2
(layer-local MSE) and stage 3 (KL), the time to the first finished step (fla's autotuning included),
and the top GPU kernels of a step (torch.profiler). Prints one JSON object a line, then a summary.

    python recipes/profile_distill_step.py                                  # one H200, ~3-6 min
    python recipes/profile_distill_step.py --ssd-backends torch             # skip fla (no autotune)
    python recipes/profile_distill_step.py --device cpu --layers 2 --hidden 64 --heads 4 --kv-heads 2 \\
        --mlp 128 --vocab 256 --rows 2 --seq-len 64 --steps 2                # a smoke test

The step is the real one (``training.loop.train_loop`` with the stage's ``stage_loss``, fp32 master
weights, bf16 autocast on CUDA, AdamW), packed: ``--rows`` samples of ``--seq-len`` tokens in one
row with cu_seqlens, as ``distill --pack`` feeds it. Run the backends in the order given; the first
fla run on a fresh machine pays the autotuning, so ``first_step_s`` of ``fla`` vs ``torch`` says which
reaches a first result sooner, and ``tokens_per_s`` which is faster once warm.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

from mmmamba.bench.speed import add_shape_arguments
from mmmamba.convert import convert_to_mamba
from mmmamba.data.conversations import Batch
from mmmamba.distill.stages import STAGES, select_trainable, stage_loss
from mmmamba.models import Decoder, DecoderConfig
from mmmamba.training.loop import train_loop
from mmmamba.training.optim import NonFiniteGuard, make_adamw


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    add_shape_arguments(p, layers=30, hidden=576, heads=9, kv_heads=3, mlp=1536, vocab=49152)  # SmolLM2-135M's
    p.add_argument("--rows", type=int, default=64, help="samples per step, packed into one row")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sample")
    p.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--stages", default="1,3", help="stage 2 costs as stage 1 plus Wq/Wk/Wv gradients")
    p.add_argument("--ssd-backends", default="torch,fla", help="scan backends, in this order")
    p.add_argument("--top", type=int, default=15, help="kernels listed per profile")
    return p.parse_args()


def smollm2_shape(args) -> DecoderConfig:
    return DecoderConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
        num_kv_heads=args.kv_heads, head_dim=args.hidden // args.heads, intermediate_size=args.mlp,
        rope_theta=1e5, max_position=args.rows * args.seq_len + 8, tie_embeddings=True,
    )  # fmt: skip


def packed_batch(args, device) -> Batch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (1, args.rows * args.seq_len), generator=g)
    cu = torch.arange(0, args.rows + 1, dtype=torch.int32) * args.seq_len
    return Batch(ids, torch.ones_like(ids), torch.ones_like(ids, dtype=torch.bool), None, cu).to(device)


def run(args, teacher, student_cfg, student_init, stage_id: int, backend: str, device) -> dict:
    cuda = str(device).startswith("cuda")
    with torch.device(device):
        student = Decoder(student_cfg)
    student.load_state_dict(student_init)
    student.set_backends(ssd=backend)
    stage = STAGES[stage_id].with_options()
    params = [p for _, p in select_trainable(student, stage)]
    opt = make_adamw([(None, p) for p in params], stage.optim)
    batch = packed_batch(args, device)
    tokens = int(batch.attention_mask.sum())
    times = [time.perf_counter()]

    def after(r):
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        return False

    def steps(n):
        train_loop(
            params=params, opt=opt, optim=stage.optim, steps=n, start=0, micro_batches=lambda step: [batch],
            loss=lambda b: stage_loss(stage, teacher, student, b), guard=NonFiniteGuard("profile"),
            last_good=lambda: "-", after_step=after, device=str(device), progress=False, train_mode=student.train,
        )  # fmt: skip

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    steps(args.steps + 2)
    step_s = (times[-1] - times[3]) / (len(times) - 4)
    row = {"stage": stage_id, "ssd_backend": backend, "tokens_per_step": tokens, "first_step_s": times[1] - times[0],
           "step_ms": step_s * 1e3, "tokens_per_s": tokens / step_s,
           "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None}  # fmt: skip
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        steps(2)
    key = "device_time_total" if cuda else "cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
    total = sum(getattr(e, "self_" + key, 0) for e in events) or 1
    row["top_kernels"] = [
        {"name": e.key[:90], "ms_per_step": getattr(e, key) / 2e3, "self_share": getattr(e, "self_" + key) / total,
         "calls_per_step": e.count / 2}
        for e in events[: args.top]
    ]  # fmt: skip
    row["aten_ops_per_step"] = sum(e.count for e in events if e.key.startswith("aten::")) / 2
    return row


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    with torch.device(device):
        teacher = Decoder(smollm2_shape(args))
    first = convert_to_mamba(teacher, [])
    student_cfg, student_init = first.config, first.state_dict()
    del first
    teacher = teacher.to(torch.bfloat16 if device.type == "cuda" else torch.float32).eval().requires_grad_(False)
    rows = []
    for backend in args.ssd_backends.split(","):
        for stage_id in [int(s) for s in args.stages.split(",")]:
            row = run(args, teacher, student_cfg, student_init, stage_id, backend, device)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    summary = {
        "shape": {k: getattr(args, k) for k in ("layers", "hidden", "heads", "kv_heads", "mlp", "vocab")},
        "rows_x_seq_len": [args.rows, args.seq_len],
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "tokens_per_s": {f"stage{r['stage']}_{r['ssd_backend']}": round(r["tokens_per_s"]) for r in rows},
        "first_step_s": {f"stage{r['stage']}_{r['ssd_backend']}": round(r["first_step_s"], 1) for r in rows},
    }
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
