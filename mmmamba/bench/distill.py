"""Distillation throughput per stage on 1 vs N GPUs, through the real training loop (training/loop.py).

    torchrun --nproc-per-node 1 scripts/gpu_distill_scale.py      # 1 GPU
    torchrun --nproc-per-node 2 scripts/gpu_distill_scale.py      # 2 GPUs: FSDP2, and layer-parallel for stages 1-2

Random weights at HoVLE width (hidden 2048, 16 heads / 8 KV heads × 128, MLP 8192; --layers 8 by
default, 32 is HoVLE), fp32 master weights, bf16 autocast, AdamW, the stage's real loss, the global
batch split over the processes. Rank 0 prints one JSON row per (stage, mode, packing): tokens/s in
all and per GPU, step time, peak memory per GPU. Padded vs packed rows hold the same real tokens
(lengths drawn from --min-len..--seq-len), so their ratio is the packing gain.
Runs on CPU too (``--device cpu --hidden 64 --heads 4 --kv-heads 2 --mlp 128 --vocab 256``, gloo), as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.distributed as dist

from ..bench.speed import add_shape_arguments, hovle_config
from ..convert import convert_to_mamba
from ..data.conversations import Batch
from ..distill.stages import STAGES, select_trainable, stage_loss
from ..models import Decoder
from ..training.loop import train_loop
from ..training.optim import NonFiniteGuard, make_adamw
from ..training.parallel import init_from_env, layer_owners, shard_fsdp


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    add_shape_arguments(p, layers=8, hidden=2048, heads=16, kv_heads=8, mlp=8192, vocab=32000)
    p.add_argument("--global-batch", type=int, default=16, help="samples per step over all processes")
    p.add_argument("--seq-len", type=int, default=2048, help="longest sample")
    p.add_argument("--min-len", type=int, default=512, help="shortest sample (lengths uniform in between)")
    p.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--stages", default="1,2,3")
    p.add_argument("--modes", default="fsdp,layer", help="layer applies to stages 1-2 with more than one process")
    p.add_argument("--pack", default="0,1", help="0: padded rows, 1: packed rows (cu_seqlens)")
    p.add_argument("--ssd-backend", default="auto")
    p.add_argument("--checkpoint", action="store_true", help="activation checkpointing (stage 3: each layer)")
    return p.parse_args()


def make_batches(args, world: int, rank: int, packed: bool, data_parallel: bool, device) -> list[Batch]:
    """This process's part of one global batch (the same samples every step: the timing is what matters)."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.min_len, args.seq_len + 1, (args.global_batch,), generator=g).tolist()
    samples = [torch.randint(0, args.vocab, (n,), generator=g) for n in lengths]
    if data_parallel:
        per = args.global_batch // world
        samples = samples[rank * per : (rank + 1) * per]
    if packed:
        ids = torch.cat(samples)[None]
        cu = torch.tensor([0] + [len(s) for s in samples]).cumsum(0).to(torch.int32)
        batch = Batch(ids, torch.ones_like(ids), torch.ones_like(ids, dtype=torch.bool), None, cu)
    else:
        L = max(len(s) for s in samples)
        ids = torch.zeros(len(samples), L, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, s in enumerate(samples):
            ids[i, : len(s)], att[i, : len(s)] = s, 1
        batch = Batch(ids, att, att.bool(), None)
    return [batch.to(device)]


def main() -> None:
    args = parse_args()
    comm, device = init_from_env(args.device)
    torch.manual_seed(0)
    cfg = hovle_config(args, max_position=args.global_batch * args.seq_len + 8)
    with torch.device(device):
        teacher = Decoder(cfg)
    first = convert_to_mamba(teacher, [])
    student_cfg, student_init = first.config, first.state_dict()
    del first
    teacher = teacher.to(torch.bfloat16).eval().requires_grad_(False)  # frozen: bf16, replicated
    cuda = str(device).startswith("cuda")
    for stage_id in [int(s) for s in args.stages.split(",")]:
        base = STAGES[stage_id]
        for mode in args.modes.split(","):
            if mode == "layer" and (not base.layer_local or comm.world == 1):
                continue
            for packed in [bool(int(x)) for x in args.pack.split(",")]:
                with torch.device(device):
                    student = Decoder(student_cfg)
                student.load_state_dict(student_init)
                student.checkpoint_layers = args.checkpoint
                comm.mode, comm.local_params = mode, comm.on and mode == "layer"
                comm.grad_scale = float(comm.world) if comm.on and mode == "fsdp" else 1.0
                comm.units = []
                owners = layer_owners(list(range(args.layers)), comm.world) if mode == "layer" else {}
                own = [i for i, r in owners.items() if r == comm.rank] if mode == "layer" else None
                stage = base.with_options(layers=own)
                if comm.on and mode == "fsdp":
                    if base.layer_local:
                        shard_fsdp(comm, [layer.mixer for layer in student.layers], "mix")
                    else:
                        shard_fsdp(comm, list(student.layers), root=student)
                params = [p for _, p in select_trainable(student, stage)]
                opt = make_adamw([(None, p) for p in params], stage.optim)
                batches = make_batches(args, comm.world, comm.rank, packed, mode == "fsdp", device)
                tokens = (
                    int(comm.sum(batches[0].attention_mask.sum().reshape(1).float()))
                    if mode == "fsdp"
                    else int(batches[0].attention_mask.sum())
                )
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                times = []

                def after(r, times=times):
                    if cuda:
                        torch.cuda.synchronize()
                    times.append(time.perf_counter())
                    return False

                row = {"world": comm.world, "stage": stage_id, "mode": mode, "packed": packed, "layers": args.layers,
                       "hidden": args.hidden, "global_batch": args.global_batch, "tokens_per_step": tokens,
                       "ssd_backend": args.ssd_backend, "checkpoint": args.checkpoint}  # fmt: skip
                try:
                    train_loop(
                        params=params, opt=opt, optim=stage.optim, steps=args.steps + 2, start=0,
                        micro_batches=lambda step, b=batches: b,
                        loss=lambda batch, s=stage, m=student: stage_loss(s, teacher, m, batch),
                        guard=NonFiniteGuard("bench"), last_good=lambda: "-", after_step=after, comm=comm,
                        device=str(device), progress=False, train_mode=student.train,
                    )  # fmt: skip
                    step_s = (times[-1] - times[1]) / (len(times) - 2)
                    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
                    row |= {"step_ms": step_s * 1e3, "tokens_per_s": tokens / step_s,
                            "tokens_per_s_per_gpu": tokens / step_s / comm.world, "peak_gb_rank0": peak}  # fmt: skip
                except torch.OutOfMemoryError as e:
                    row["error"] = f"out of memory: {e}"[:200]
                if comm.rank == 0:
                    print(json.dumps(row), flush=True)
                del student, opt, batches
                if cuda:
                    torch.cuda.empty_cache()
    if comm.on:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
