"""GPU-only fast paths against plain PyTorch references in float64 (run on the device; CI has no GPU).

    python tests/gpu/check_kernels.py [OUT.json [GROUP ...]]

Checks, each at several shapes with odd lengths:
1. fla's scan (``ssd_fla_scan``, fp32 and bf16 inputs): outputs, final state and the gradients of
   x, Δ, A, B, C against the float64 scan; an initial state; packed samples (``cu_seqlens``);
   chunked prefill from a carried state.
2. The Triton decode-attention kernel against the float64 masked softmax: GQA groups 1–4,
   padding holes, a long cache (103 K) with a shorter length, bf16 and fp32.
3. ``DecodeStep`` (eager static step, CUDA graph, torch.compile + graph) against ``Decoder.forward``
   token by token, for a teacher, a linear and a hybrid model, fp32 and bf16, left-padded batch.
4. The Mamba-2 mixer's parameter gradients with the fla backend against the torch backend.
6. Decode attention on a KV cache of more than 2^31 elements per tensor (64-bit offsets), against the
   reference on single-row slices: the first, a middle and the last row.
7. Chunked prefill attention (``prefill_attention``: flash and memory-efficient kernels, past + chunk
   merged by log-sum-exp) against the float64 masked softmax: GQA, odd chunk sizes, left padding.
5. A packed row of mixed lengths through the attention teacher (SDPA on the row unpacked to one
   sample a row) against each sample alone in float64: logits and parameter gradients, fp32 and bf16.
8. The fused Mamba-2 decode step (``ops.mamba_step``, one Triton kernel after the in-projection) against
   the float64 reference at HoVLE's shape (16/8 heads of 128), conv kernel 2 and 4, batch 1 and 64, fp32 and
   bf16, three tokens carried: output and both states; q/k norm, D, gate-first; the mixer's step both ways.
9. The same past 2^31 state elements (8 200 rows: an 8.6 GB fp32 state), on rows at the start, middle, end.
Prints one PASS/FAIL line per check and exits 1 if any failed.
"""

from __future__ import annotations

import copy
import json
import sys

import torch

from mmmamba.bench.decode import mamba_step_inputs
from mmmamba.convert import convert_to_mamba
from mmmamba.infer.decode_step import DecodeStep
from mmmamba.infer.generate import left_pad, prefill
from mmmamba.layers import Mamba2Config, Mamba2Mixer
from mmmamba.models import Decoder, DecoderConfig
from mmmamba.ops import ssd_chunked_scan, ssd_naive_scan
from mmmamba.ops.decode_attention import decode_attention_reference, decode_attention_triton
from mmmamba.ops.mamba_step import mamba2_decode_step_reference, mamba2_decode_step_triton
from mmmamba.ops.prefill_attention import prefill_attention
from mmmamba.ops.ssd import ssd_scan
from mmmamba.ops.ssd_fla import ssd_fla_scan

results = []


def check(name: str, value: float, tol: float) -> None:
    ok = bool(value <= tol)
    results.append({"check": name, "value": value, "tol": tol, "pass": ok})
    print(f"{'PASS' if ok else 'FAIL'} {name}: {value:.3e} (tol {tol:.0e})", flush=True)


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def scan_inputs(b, L, h, p, n, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(b, L, h, p, device="cuda", generator=g)
    dt = torch.rand(b, L, h, device="cuda", generator=g) * 0.1 + 1e-3
    A = -torch.rand(h, device="cuda", generator=g) * 2 - 0.2
    B = torch.randn(b, L, h, n, device="cuda", generator=g) / n**0.5
    C = torch.randn(b, L, h, n, device="cuda", generator=g) / n**0.5
    s0 = torch.randn(b, h, p, n, device="cuda", generator=g) * 0.1
    return x, dt, A, B, C, s0


def check_scan():
    for b, L, h, p, n in [(2, 1, 16, 128, 128), (1, 63, 16, 128, 128), (1, 2065, 16, 128, 128)]:
        x, dt, A, B, C, s0 = scan_inputs(b, L, h, p, n)
        ref = [t.double().requires_grad_() for t in (x, dt, A, B, C)]
        y_ref, s_ref = (ssd_naive_scan if L < 400 else ssd_chunked_scan)(*ref, None, s0.double())
        (y_ref.sum() + s_ref.sum()).backward()
        for dtype, tol in ((torch.bfloat16, 3e-2),):  # bf16: what training (autocast) and inference use
            ins = [t.clone().requires_grad_() for t in (x, dt, A, B, C)]
            y, s = ssd_fla_scan(*ins, None, s0, compute_dtype=dtype)
            (y.float().sum() + s.float().sum()).backward()
            tag = f"fla {str(dtype)[6:]} b{b} L{L} h{h} p{p}"
            check(f"{tag} y", rel(y, y_ref), tol)
            check(f"{tag} state", rel(s, s_ref), tol)
            for name, t, r in zip("x dt A B C".split(), ins, ref):
                check(f"{tag} grad {name}", rel(t.grad, r.grad), tol * 4)
            with torch.no_grad():  # inference takes chunk_simple_gla, training chunk_gla
                y, s = ssd_fla_scan(x, dt, A, B, C, None, s0, compute_dtype=dtype)
            check(f"{tag} y (no grad)", rel(y, y_ref), tol)
            check(f"{tag} state (no grad)", rel(s, s_ref), tol)
    # packed samples restart the state at each boundary
    lengths = [17, 64, 130, 1]
    x, dt, A, B, C, _ = scan_inputs(1, sum(lengths), 16, 128, 128, seed=1)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), device="cuda")
    y, s = ssd_scan(x, dt, A, B, C, backend="fla", cu_seqlens=cu)
    y_ref, s_ref = ssd_scan(*(t.double() for t in (x, dt, A, B, C)), backend="torch", cu_seqlens=cu)
    check("fla packed (cu_seqlens) y", rel(y, y_ref), 5e-3)
    check("fla packed (cu_seqlens) states", rel(s, s_ref), 5e-3)
    # chunked prefill: two calls with the state carried = one call
    x, dt, A, B, C, _ = scan_inputs(2, 333, 16, 128, 128, seed=2)
    y_all, s_all = ssd_fla_scan(x, dt, A, B, C)
    y1, s1 = ssd_fla_scan(x[:, :200], dt[:, :200], A, B[:, :200], C[:, :200])
    y2, s2 = ssd_fla_scan(x[:, 200:], dt[:, 200:], A, B[:, 200:], C[:, 200:], None, s1)
    check("fla chunked prefill y", rel(torch.cat([y1, y2], 1), y_all), 5e-3)
    check("fla chunked prefill state", rel(s2, s_all), 5e-3)


def check_decode_attention():
    g = torch.Generator(device="cuda").manual_seed(3)
    for b, h, kvh, S, d, length, holes, dtype in [
        (1, 16, 8, 103424 + 300, 128, 103424 + 5, False, torch.bfloat16),
        (3, 12, 4, 1000, 128, 777, True, torch.float32),
        (2, 9, 3, 130, 64, 130, True, torch.bfloat16),
        (2, 4, 4, 33, 32, 1, False, torch.float32),
        (4, 8, 2, 5000, 64, 4097, True, torch.float32),
    ]:
        q = torch.randn(b, h, d, device="cuda", generator=g).to(dtype)
        k = torch.randn(b, kvh, S, d, device="cuda", generator=g).to(dtype)
        v = torch.randn(b, kvh, S, d, device="cuda", generator=g).to(dtype)
        valid = torch.ones(b, S, dtype=torch.bool, device="cuda")
        if holes:
            valid = torch.rand(b, S, device="cuda", generator=g) > 0.3
        valid[:, length - 1] = True
        n = torch.tensor(length, device="cuda")
        out = decode_attention_triton(q, k, v, valid, n)
        ref = decode_attention_reference(q.double(), k.double(), v.double(), valid, n)
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        check(f"decode attention b{b} h{h}/{kvh} S{S} len{length} {str(dtype)[6:]}", rel(out, ref), tol)


def check_decode_attention_large():
    """More than 2^31 elements per cache tensor: b·stride_kb passes int32 from the second third of the rows."""
    b, h, kvh, S, d = 17, 16, 8, 130_000, 128  # 17·8·130 000·128 = 2.26e9 elements, 4.5 GB
    assert b * kvh * S * d > 2**31
    g = torch.Generator(device="cuda").manual_seed(5)
    k = torch.empty(b, kvh, S, d, device="cuda", dtype=torch.bfloat16)
    v = torch.empty_like(k)
    for r in range(b):  # filled a row at a time: no float32 temporary of the whole cache
        k[r].normal_(generator=g)
        v[r].normal_(generator=g)
    q = torch.randn(b, h, d, device="cuda", generator=g).to(torch.bfloat16)
    valid = torch.rand(b, S, device="cuda", generator=g) > 0.2
    length = torch.tensor(S - 7, device="cuda")
    valid[:, S - 8] = True
    out = decode_attention_triton(q, k, v, valid, length)
    for r in (0, b // 2, b - 1):
        sl = slice(r, r + 1)
        ref = decode_attention_reference(q[sl].double(), k[sl].double(), v[sl].double(), valid[sl], length)
        check(f"decode attention past 2^31 elements, row {r} of {b}", rel(out[sl], ref), 2e-2)
    del k, v
    torch.cuda.empty_cache()


def masked_softmax_reference(q, k_all, v_all, valid, past):
    b, h, L, d = q.shape
    g = h // k_all.shape[1]
    k_all, v_all = (t.repeat_interleave(g, 1).double() for t in (k_all, v_all))
    scores = torch.einsum("bhld,bhsd->bhls", q.double(), k_all) / d**0.5
    S = k_all.shape[2]
    mask = torch.arange(S, device=q.device)[None, :] <= torch.arange(past, past + L, device=q.device)[:, None]
    mask = mask[None, None] if valid is None else mask[None, None] & valid[:, None, None, :]
    w = torch.nan_to_num(scores.masked_fill(~mask, float("-inf")).softmax(-1), nan=0.0)
    return torch.einsum("bhls,bhsd->bhld", w, v_all)


def check_prefill_attention():
    g = torch.Generator(device="cuda").manual_seed(7)
    for b, h, kvh, past, L, d, padded, dtype in [
        (1, 16, 8, 12_003, 3_001, 128, False, torch.bfloat16),
        (2, 12, 4, 1001, 333, 64, False, torch.float16),
        (3, 8, 8, 77, 129, 128, True, torch.bfloat16),
        (2, 9, 3, 5, 1, 64, True, torch.bfloat16),
        (1, 4, 2, 0, 517, 32, True, torch.float16),
    ]:
        q = torch.randn(b, h, L, d, device="cuda", generator=g).to(dtype)
        k_all = torch.randn(b, kvh, past + L, d, device="cuda", generator=g).to(dtype)
        v_all = torch.randn(b, kvh, past + L, d, device="cuda", generator=g).to(dtype)
        valid = None
        if padded:
            pad = torch.randint(0, past + L, (b,), device="cuda", generator=g)
            valid = torch.arange(past + L, device="cuda")[None, :] >= pad[:, None]
        ref = masked_softmax_reference(q, k_all, v_all, valid, past)
        real = (torch.ones(b, L, dtype=torch.bool, device="cuda") if valid is None else valid[:, past:])[:, None]
        real = real.expand(b, h, L)
        for backend in ("flash", "cudnn"):
            out = prefill_attention(q, k_all[:, :, :past], v_all[:, :, :past], k_all[:, :, past:],
                                    v_all[:, :, past:], valid, backend)  # fmt: skip
            check(f"prefill attention {backend} b{b} h{h}/{kvh} past{past} L{L} d{d} "
                  f"{'padded ' if padded else ''}{str(dtype)[6:]}", rel(out[real], ref[real]), 2e-2)  # fmt: skip


def tiny(kind: str, dtype) -> Decoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(
        vocab_size=500, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, head_dim=32,
        intermediate_size=512, max_position=512, rope_theta=1e5,
    )  # fmt: skip
    teacher = Decoder(cfg)
    for p in teacher.parameters():  # larger weights than the default init: outputs that differ per token
        p.data.normal_(0, 0.08)
    model = teacher if kind == "teacher" else convert_to_mamba(teacher, [] if kind == "linear" else [1])
    return model.to("cuda", dtype).eval()


def check_decode_steps():
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [1] * 40]
    for kind in ("teacher", "linear", "hybrid"):
        for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
            model = tiny(kind, dtype)
            if dtype == torch.float32:  # fla's kernels are checked above; fp32 here checks the decode paths
                model.set_backends(ssd="torch")
            ids, mask = left_pad(prompts, 0, "cuda")
            modes = (
                ("forward", "eager", "graph", "compile") if dtype == torch.bfloat16 else ("forward", "eager", "graph")
            )
            caches = {m: model.make_cache(3, 96) for m in modes}
            first = {m: prefill(model, model.embed(ids), mask, c) for m, c in caches.items()}
            steps = {m: DecodeStep(model, c, m) for m, c in caches.items() if m != "forward"}
            token = first["forward"].argmax(-1)
            worst = {m: 0.0 for m in steps}
            for _ in range(24):
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                ref = model(token[:, None], attention_mask=mask, cache=caches["forward"]).logits[:, -1]
                for m, step in steps.items():
                    worst[m] = max(worst[m], rel(step(token), ref))
                token = ref.argmax(-1)
            for m, w in worst.items():
                check(f"decode step {m} vs forward, {kind} {str(dtype)[6:]}", w, tol)
        model = tiny(kind, torch.bfloat16)
        model.fuse_projections()
        ids, mask = left_pad(prompts, 0, "cuda")
        ca, cb = model.make_cache(3, 64), model.make_cache(3, 64)
        la = prefill(model, model.embed(ids), mask, ca)
        prefill(model, model.embed(ids), mask, cb)
        step = DecodeStep(model, cb, "graph")
        token = la.argmax(-1)
        worst = 0.0
        for _ in range(8):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            ref = model(token[:, None], attention_mask=mask, cache=ca).logits[:, -1]
            worst = max(worst, rel(step(token), ref))
            token = ref.argmax(-1)
        check(f"fused projections + graph vs forward, {kind} bf16", worst, 5e-2)


def check_compiled_prefill():
    """Prefill with ``prefill_mode="compile"`` (Inductor, ops.regions) against eager, chunked at odd sizes over a
    left-padded batch: float32 with the torch scan (the regions alone), bf16 with fla (the real path)."""
    prompts = [[5, 6, 7, 8, 9, 10, 11] * 9, [12, 13, 14] * 5, [1] * 70]
    for kind in ("teacher", "linear", "hybrid"):
        for dtype, ssd, tol in ((torch.float32, "torch", 1e-4), (torch.bfloat16, "fla", 2e-2)):
            model = tiny(kind, dtype)
            model.set_backends(ssd=ssd)
            ids, mask = left_pad(prompts, 0, "cuda")
            out = {}
            for mode in ("eager", "compile"):
                model.set_backends(prefill_mode=mode)
                cache = model.make_cache(3, 96)
                logits = prefill(model, model.embed(ids), mask, cache, 29)
                out[mode] = (logits, [c.ssm if hasattr(c, "ssm") else c.k[:, :, :70] for c in cache.layers])
            worst = max(rel(a, b) for a, b in zip(out["compile"][1], out["eager"][1]))
            check(f"compiled prefill {kind} {str(dtype)[6:]} logits", rel(out["compile"][0], out["eager"][0]), tol)
            check(f"compiled prefill {kind} {str(dtype)[6:]} caches", worst, tol)


def check_mixer_grads():
    torch.manual_seed(4)
    cfg = Mamba2Config(2048, 16, 8, 128)
    mixer = Mamba2Mixer(cfg).cuda()
    torch.nn.init.normal_(mixer.dt_proj.weight, std=0.02)
    u = torch.randn(2, 301, 2048, device="cuda")
    grads = {}
    for backend in ("torch", "fla"):
        mixer.cfg.ssd_backend = backend
        mixer.zero_grad()
        with torch.autocast("cuda", torch.bfloat16, enabled=backend == "fla"):  # as distillation trains
            mixer(u).float().pow(2).mean().backward()
        grads[backend] = {n: p.grad.clone() for n, p in mixer.named_parameters()}
    for n in grads["torch"]:
        check(f"mixer grad {n} fla+bf16 autocast vs torch fp32", rel(grads["fla"][n], grads["torch"][n]), 5e-2)


def check_packed_attention():
    """A packed row of samples of mixed lengths (SDPA on the row unpacked to one sample a row) against
    each sample alone in float64: logits and the gradients of every parameter, fp32 and bf16 autocast."""
    lengths = [35, 40, 512, 33, 1, 64, 65, 7]
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=97, hidden_size=128, num_layers=2, num_heads=8, num_kv_heads=2, head_dim=16,
                        intermediate_size=256, max_position=512)  # fmt: skip
    ref = Decoder(cfg).double()
    ids = [torch.randint(0, 97, (n,)) for n in lengths]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda")
    alone = [ref(i[None]).logits[0] for i in ids]
    sum(a.float().pow(2).mean() for a in alone).backward()
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        model = Decoder(cfg).cuda()
        model.load_state_dict(ref.state_dict())
        with torch.autocast("cuda", dtype, enabled=dtype != torch.float32):
            logits = model(torch.cat(ids)[None].cuda(), cu_seqlens=cu).logits[0]
        pieces = logits.float().cpu().split(lengths)
        check(f"packed attention {str(dtype)[6:]} logits", max(rel(a, b) for a, b in zip(pieces, alone)), tol)
        sum(a.pow(2).mean() for a in pieces).backward()
        worst = max(rel(p.grad.cpu(), r.grad) for p, r in zip(model.parameters(), ref.parameters()))
        check(f"packed attention {str(dtype)[6:]} grads", worst, tol * 4)


def _wide(s: dict, rows=slice(None)) -> dict:
    """The float64 copy the reference runs on (rows of the states only)."""
    out = {}
    for n, t in s.items():
        if t is not None and n in ("conv_state", "ssm_state"):
            t = t[rows]
        out[n] = None if t is None else t.double().clone()
    return out


def check_mamba_step():
    h, kvh, hd = 16, 8, 128  # HoVLE's
    kinds = [(b, k, False, False, "norm-first") for b in (1, 64) for k in (2, 4)]
    kinds += [(3, 4, True, True, "gate-first"), (5, 2, False, True, "gate-first")]
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        for b, k, qk, use_D, order in kinds:
            s, token = mamba_step_inputs(b, h, kvh, hd, k, dtype, qk, use_D, seed=b * 10 + k)
            ref = _wide(s)
            kw = dict(num_heads=h, num_kv_heads=kvh, head_dim=hd, gate_order=order)
            worst = {"out": 0.0, "ssm": 0.0, "conv": 0.0}
            for _ in range(3):
                xBC, dt_in, gate = token()
                out = mamba2_decode_step_triton(xBC, dt_in, gate, **s, **kw)
                want = mamba2_decode_step_reference(xBC.double(), dt_in.double(), gate.double(), **ref, **kw)
                worst["out"] = max(worst["out"], rel(out, want))
                worst["ssm"] = max(worst["ssm"], rel(s["ssm_state"], ref["ssm_state"]))
                if k > 1:
                    worst["conv"] = max(worst["conv"], rel(s["conv_state"], ref["conv_state"]))
            tag = f"mamba step b{b} k{k}{' qk' if qk else ''}{' D' if use_D else ''} {order} {str(dtype)[6:]}"
            check(f"{tag} out", worst["out"], tol)
            check(f"{tag} ssm state", worst["ssm"], 1e-4)
            check(f"{tag} conv state", worst["conv"], 0.0)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):  # the mixer's step, triton and torch
        torch.manual_seed(6)
        wide = Mamba2Mixer(Mamba2Config(2048, 16, 8, 128, use_D=True, gate_order="gate-first")).cuda()
        torch.nn.init.normal_(wide.dt_proj.weight, std=0.02)
        mixer = copy.deepcopy(wide).to(dtype).eval()
        wide = wide.to(dtype).double().eval()  # the same (rounded) weights in float64, the torch step
        wide.cfg.decode_backend = "torch"
        mixer.fuse_projections()
        caches = {bk: mixer.make_cache(4, 0, dtype, "cuda") for bk in ("torch", "triton")}
        c_wide = wide.make_cache(4, 0, torch.float64, "cuda")
        worst = {"torch": 0.0, "triton": 0.0}
        with torch.no_grad():
            for _ in range(5):
                u = torch.randn(4, 2048, device="cuda", dtype=dtype)
                want = wide.step(u.double(), c_wide)
                for bk, cache in caches.items():
                    mixer.cfg.decode_backend = bk
                    y = mixer.step(u, cache)
                    worst[bk] = max(worst[bk], rel(y, want), rel(cache.ssm, c_wide.ssm))
        for bk, w in worst.items():  # the torch path rounds to bf16 between its pieces: looser
            check(f"mixer step {bk} vs float64 {str(dtype)[6:]}", w, tol if bk == "triton" else 4 * tol)


def check_mamba_step_large():
    """More than 2^31 state elements: r·stride passes int32 from row 8192 on."""
    b, h, kvh, hd, k = 8200, 16, 8, 128, 2
    assert b * h * hd * hd > 2**31
    s, token = mamba_step_inputs(b, h, kvh, hd, k, torch.bfloat16, seed=11)
    rows = [0, b // 2, b - 1]
    refs = {r: _wide(s, slice(r, r + 1)) for r in rows}
    xBC, dt_in, gate = token()
    out = mamba2_decode_step_triton(xBC, dt_in, gate, **s, num_heads=h, num_kv_heads=kvh, head_dim=hd)
    for r in rows:
        sl = slice(r, r + 1)
        want = mamba2_decode_step_reference(
            xBC[sl].double(), dt_in[sl].double(), gate[sl].double(), **refs[r], num_heads=h, num_kv_heads=kvh,
            head_dim=hd,
        )  # fmt: skip
        tag = f"mamba step past 2^31 state elements, row {r} of {b}"
        check(f"{tag} out", rel(out[sl], want), 2e-2)
        check(f"{tag} ssm state", rel(s["ssm_state"][sl], refs[r]["ssm_state"]), 1e-4)
    del s
    torch.cuda.empty_cache()


if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = False
    groups = {
        f.__name__: f
        for f in (
            check_scan,
            check_decode_attention,
            check_decode_attention_large,
            check_prefill_attention,
            check_decode_steps,
            check_compiled_prefill,
            check_mixer_grads,
            check_packed_attention,
            check_mamba_step,
            check_mamba_step_large,
        )
    }
    only = [a for a in sys.argv[2:]]  # optional: the groups to run, e.g. check_decode_steps
    for fn in (groups[name] for name in only) if only else groups.values():
        print(f"-- {fn.__name__}", flush=True)
        try:
            fn()
        except Exception as e:  # noqa: BLE001 — report and go on to the next group
            results.append({"check": fn.__name__, "error": f"{type(e).__name__}: {e}"[:500], "pass": False})
            print(f"FAIL {fn.__name__}: {type(e).__name__}: {e}", flush=True)
    failed = [r for r in results if not r["pass"]]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(
                {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}, f, indent=1
            )
    sys.exit(1 if failed else 0)
