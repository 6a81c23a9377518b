"""The Mamba-2 decode step (``ops.mamba_step``): the plain reference is the mixer's own step, and the fused Triton
kernel (run by Triton's CPU interpreter, in float64) equals the reference on outputs and on both carried states;
the backend is a runtime choice that is validated and never saved.

The interpreter is switched on by TRITON_INTERPRET=1, read when triton is imported, so the kernel checks run
once in a fresh process (``interpreted`` below) and each test asserts its part of what that process measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmmamba.convert import convert_to_mamba
from mmmamba.errors import MmmambaError
from mmmamba.layers import Mamba2Config, Mamba2Mixer
from mmmamba.models import Decoder, DecoderConfig
from mmmamba.ops import mamba_step
from mmmamba.ops.mamba_step import mamba2_decode_step, mamba2_decode_step_reference, resolve_decode_backend
from tests.conftest import tiny_config

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[2]
STEPS = 4  # consecutive tokens: the states carry from one to the next

# b, heads, kv heads, head_dim, conv kernel, conv bias, D, q/k norm, gate order, activation, block_heads (None: auto)
CASES = [
    (1, 4, 4, 16, 2, True, False, False, "norm-first", "silu", None),
    (3, 6, 2, 32, 4, True, True, True, "gate-first", "silu", None),
    (3, 6, 3, 16, 1, False, True, False, "norm-first", "identity", None),
    (1, 6, 2, 16, 4, False, False, True, "gate-first", "identity", None),
    (3, 4, 4, 32, 1, True, True, False, "gate-first", "silu", None),
    (1, 6, 3, 32, 2, False, False, False, "norm-first", "silu", None),
    (3, 6, 3, 32, 2, True, False, True, "norm-first", "identity", None),
    (1, 4, 4, 16, 4, False, True, True, "gate-first", "silu", None),
    (3, 6, 2, 16, 2, True, True, True, "norm-first", "silu", 1),  # the group's 3 heads one block at a time
    (3, 6, 2, 32, 4, False, True, False, "gate-first", "identity", 2),  # 3 heads in blocks of 2: one padded
    (2, 6, 3, 12, 3, True, True, True, "gate-first", "silu", None),  # head_dim and kernel not powers of two
]


def case_id(case) -> str:
    b, h, kvh, hd, k, bias, D, qk, order, act, hb = case
    return f"b{b}-h{h}/{kvh}-hd{hd}-k{k}-{'bias' if bias else 'nobias'}-{'D' if D else 'noD'}-" + (
        f"{'qk' if qk else 'noqk'}-{order}-{act}-hb{hb}"
    )


def step_inputs(case, seed: int) -> dict:
    """Random float64 states and parameters of one case."""
    b, h, kvh, hd, k, bias, use_D, qk, *_ = case
    g = torch.Generator().manual_seed(seed)
    t = lambda *shape: torch.randn(*shape, generator=g, dtype=F64)  # noqa: E731
    cd = (2 * kvh + h) * hd
    return dict(
        conv_state=t(b, k - 1, cd), conv_weight=t(cd, k) / k**0.5, conv_bias=t(cd) if bias else None,
        dt_bias=t(h) - 2.0, A_log=t(h) * 0.5, D=t(h) if use_D else None, ssm_state=t(b, h, hd, hd) * 0.3,
        norm_weight=t(hd), q_norm=t(hd) if qk else None, k_norm=t(hd) if qk else None,
    )  # fmt: skip


def token_inputs(case, g: torch.Generator, strided: bool) -> tuple:
    """One token's (xBC, dt_in, gate); ``strided``: views of one wider row, as the fused in-projection's split
    gives them (row stride not a multiple of 16)."""
    b, h, kvh, hd = case[:4]
    cd = (2 * kvh + h) * hd
    sizes = [cd, h * hd, h]
    row = torch.randn(b, sum(sizes) + (5 if strided else 0), generator=g, dtype=F64)
    xBC, gate, dt_in = row[:, : sum(sizes)].split(sizes, dim=-1)
    if not strided:
        xBC, gate, dt_in = xBC.contiguous(), gate.contiguous(), dt_in.contiguous()
    return xBC * 2.0, dt_in, gate


def kernel_errors() -> dict:
    """Interpreter side: per case, the largest |fused − reference| of the output and of both states over STEPS
    tokens (each path carrying its own states)."""
    from mmmamba.ops.mamba_step import mamba2_decode_step_triton

    errors = {}
    for i, case in enumerate(CASES):
        h, kvh, hd, order, act, hb = case[1], case[2], case[3], case[8], case[9], case[10]
        ref = step_inputs(case, i)
        fused = {n: (v.clone() if v is not None else None) for n, v in ref.items()}
        kw = dict(num_heads=h, num_kv_heads=kvh, head_dim=hd, activation=act, norm_eps=1e-5, gate_order=order)
        g = torch.Generator().manual_seed(100 + i)
        worst = {"out": 0.0, "conv": 0.0, "ssm": 0.0, "moved": 0.0}
        start = ref["ssm_state"].clone()
        for _ in range(STEPS):
            xBC, dt_in, gate = token_inputs(case, g, strided=i % 2 == 1)
            want = mamba2_decode_step_reference(xBC, dt_in, gate, **ref, **kw)
            got = mamba2_decode_step_triton(xBC, dt_in, gate, **fused, **kw, block_heads=hb)
            assert got.shape == want.shape and got.dtype == F64
            worst["out"] = max(worst["out"], (got - want).abs().max().item())
            if case[4] > 1:
                worst["conv"] = max(worst["conv"], (fused["conv_state"] - ref["conv_state"]).abs().max().item())
            worst["ssm"] = max(worst["ssm"], (fused["ssm_state"] - ref["ssm_state"]).abs().max().item())
        worst["moved"] = (ref["ssm_state"] - start).abs().max().item()  # the states did change
        errors[case_id(case)] = worst
    return errors


def integration_errors() -> dict:
    """Interpreter side: the custom op (schema, fake tensor, mutations: opcheck), torch.compile through it, the
    mixer's step with decode_backend triton against torch, and a whole student's static decode against forward."""
    from mmmamba.infer.decode_step import DecodeStep
    from mmmamba.infer.generate import left_pad, prefill

    out = {}
    case = CASES[1]
    h, kvh, hd = case[1:4]
    kw = dict(num_heads=h, num_kv_heads=kvh, head_dim=hd, activation="silu", norm_eps=1e-5, gate_order="gate-first")
    s = step_inputs(case, 7)
    xBC, dt_in, gate = token_inputs(case, torch.Generator().manual_seed(8), strided=True)
    states = [s[n] for n in ("conv_state", "conv_weight", "conv_bias", "dt_bias", "A_log", "D", "ssm_state")]
    norms = [s["norm_weight"], s["q_norm"], s["k_norm"]]
    op_args = (xBC, dt_in, gate, *states, *norms, h, kvh, hd, True, 1e-5, True, 1, 4)
    checks = torch.library.opcheck(torch.ops.mmmamba.mamba2_decode_step.default, op_args)
    out["opcheck"] = {k: v for k, v in checks.items() if v != "SUCCESS"}

    ref = step_inputs(case, 9)
    fused = {n: (v.clone() if v is not None else None) for n, v in ref.items()}

    @torch.compile(backend="aot_eager", fullgraph=True)
    def compiled(xBC, dt_in, gate, st):
        return mamba_step.mamba2_decode_step_triton(xBC, dt_in, gate, **st, **kw)

    worst = 0.0
    for t in range(3):
        xBC, dt_in, gate = token_inputs(case, torch.Generator().manual_seed(20 + t), strided=False)
        want = mamba2_decode_step_reference(xBC, dt_in, gate, **ref, **kw)
        got = compiled(xBC, dt_in, gate, fused)
        worst = max(worst, (got - want).abs().max().item(), (fused["ssm_state"] - ref["ssm_state"]).abs().max().item())
        worst = max(worst, (fused["conv_state"] - ref["conv_state"]).abs().max().item())
    out["compile"] = worst

    worst = 0.0
    for order in ("norm-first", "gate-first"):
        torch.manual_seed(3)
        cfg = Mamba2Config(24, 6, 2, 8, conv_kernel=3, use_D=True, qk_norm=True, gate_order=order)
        m = Mamba2Mixer(cfg).double()
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.4)
            m.A_log.uniform_(-1, 1)
        m.fuse_projections()  # xBC, gate and Δ become views of one row
        caches = {b: m.make_cache(2, 16, F64) for b in ("torch", "triton")}
        u = torch.randn(2, 6, 24, dtype=F64)
        with torch.no_grad():
            for t in range(u.shape[1]):
                ys = {}
                for backend, cache in caches.items():
                    m.cfg.decode_backend = backend
                    ys[backend] = m.step(u[:, t], cache)
                worst = max(worst, (ys["triton"] - ys["torch"]).abs().max().item())
                worst = max(worst, (caches["triton"].ssm - caches["torch"].ssm).abs().max().item())
                worst = max(worst, (caches["triton"].conv - caches["torch"].conv).abs().max().item())
    out["mixer"] = worst

    torch.manual_seed(0)
    cfg = tiny_config(hidden_size=48, num_heads=6, intermediate_size=40, max_position=128, vision=None,
                      image_token_id=None)  # fmt: skip
    teacher = Decoder(cfg)
    for p in teacher.parameters():
        p.data.normal_(0, 0.3)
    model = convert_to_mamba(teacher, [1]).double().eval()
    ids, mask = left_pad([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]], 0)
    c_forward, c_static = model.make_cache(2, 64), model.make_cache(2, 64)
    first = prefill(model, model.embed(ids), mask, c_forward)
    prefill(model, model.embed(ids), mask, c_static)
    model.fuse_projections()
    model.set_backends(mamba_decode="triton")
    step = DecodeStep(model, c_static, "eager")
    token, worst = first.argmax(-1), 0.0
    for _ in range(5):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        ref_logits = model(token[:, None], attention_mask=mask, cache=c_forward).logits[:, -1]
        worst = max(worst, (step(token) - ref_logits).abs().max().item())
        token = ref_logits.argmax(-1)
    out["student"] = worst
    return out


@pytest.fixture(scope="module")
def interpreted() -> dict:
    """Both checks above, run once in a process with Triton's interpreter on."""
    pytest.importorskip("triton")
    code = (
        "import json; from tests.ops.test_mamba_step import integration_errors, kernel_errors; "
        "print(json.dumps({'kernel': kernel_errors(), 'integration': integration_errors()}))"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fused_kernel_equals_the_reference_over_steps(interpreted, case):
    worst = interpreted["kernel"][case_id(case)]
    assert worst["moved"] > 1e-3  # the steps did change the state: the comparison below is not of zeros
    assert worst["out"] < 1e-10, worst
    assert worst["conv"] < 1e-12, worst  # copies, exact
    assert worst["ssm"] < 1e-10, worst


def test_custom_op_passes_opcheck_and_compiles(interpreted):
    """The op torch.compile sees: its schema (mutating both states), fake impl and dispatch are consistent,
    and a compiled call (aot_eager: functionalized) gives the reference's outputs and states."""
    assert interpreted["integration"]["opcheck"] == {}
    assert interpreted["integration"]["compile"] < 1e-10


def test_mixer_step_with_the_fused_kernel_equals_the_torch_step(interpreted):
    """Mamba2Mixer.step, decode_backend triton vs torch: GQA 6/2, conv 3, D, q/k norm, both gate orders, fused
    projections (strided views into the kernel), six tokens; outputs and both cache states."""
    assert interpreted["integration"]["mixer"] < 1e-10


def test_student_static_decode_with_the_fused_kernel_equals_forward(interpreted):
    """A hybrid student's DecodeStep (left-padded batch, fused projections) with set_backends(mamba_decode=
    "triton") against forward() with the cache, token by token."""
    assert interpreted["integration"]["student"] < 1e-9


@pytest.mark.parametrize("options", [dict(), dict(use_D=True, qk_norm=True, conv_kernel=4, gate_order="gate-first"),
                                     dict(conv_kernel=1, conv_bias=False, conv_activation="identity")])  # fmt: skip
def test_reference_is_the_mixers_torch_step(options):
    """The reference composes the mixer's own pieces: bit for bit its step, outputs and states."""
    torch.manual_seed(5)
    cfg = Mamba2Config(24, 6, 2, 8, decode_backend="torch", **options)
    m = Mamba2Mixer(cfg).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.4)
    cache = m.make_cache(3, 0, F64)
    conv, ssm = cache.conv.clone(), cache.ssm.clone()
    for _ in range(3):
        u = torch.randn(3, 24, dtype=F64)
        want = m.step(u, cache)
        xBC, gate, dt_in = m._in_proj(u)
        qk = dict(q_norm=m.q_norm, k_norm=m.k_norm) if cfg.qk_norm else {}
        got = mamba2_decode_step(
            xBC, dt_in, gate, conv, m.conv_weight, m.conv_bias, m.dt_bias, m.A_log, m.D, ssm, m.out_norm.weight,
            num_heads=6, num_kv_heads=2, head_dim=8, activation=cfg.conv_activation, norm_eps=cfg.norm_eps,
            gate_order=cfg.gate_order, backend="auto", **qk,  # auto on CPU: the reference
        )  # fmt: skip
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        torch.testing.assert_close(conv, cache.conv, rtol=0, atol=0)
        torch.testing.assert_close(ssm, cache.ssm, rtol=0, atol=0)


def test_decode_backend_is_a_validated_runtime_choice_that_is_not_saved(monkeypatch):
    assert resolve_decode_backend("auto", "cpu") == "torch"
    assert resolve_decode_backend("torch", "cuda") == "torch"
    if mamba_step.triton is not None:  # auto: the kernel on CUDA, except inside torch.compile (Inductor fuses)
        assert resolve_decode_backend("auto", "cuda") == "triton"
        assert resolve_decode_backend("auto", "cuda", compiling=True) == "torch"
        assert resolve_decode_backend("triton", "cuda", compiling=True) == "triton"
    with pytest.raises(MmmambaError, match="unknown"):
        resolve_decode_backend("fla", "cpu")
    with pytest.raises(ValueError, match="decode_backend"):
        Mamba2Config(16, 4, 2, 4, decode_backend="cuda-magic")
    with pytest.raises(MmmambaError, match="decode_backend"):
        DecoderConfig(**{**tiny_config().to_dict(), "mamba": {"decode_backend": "x"}, "vision": None,
                         "image_token_id": None})  # fmt: skip
    teacher = Decoder(tiny_config(vision=None, image_token_id=None))
    student = convert_to_mamba(teacher, [1])
    saved = student.config.to_dict()
    student.set_backends(mamba_decode="triton")
    mixers = [layer.mixer for layer in student.layers]
    assert {m.cfg.decode_backend for m in mixers if isinstance(m, Mamba2Mixer)} == {"triton"}
    assert mixers[1].cfg.decode_backend == "auto"  # the attention layer's own decode kernel is left alone
    assert student.config.to_dict() == saved and "decode_backend" not in json.dumps(saved)  # config.json unchanged
    with pytest.raises(MmmambaError, match="unknown"):
        student.set_backends(mamba_decode="cuda-magic")
    monkeypatch.setattr(mamba_step, "triton", None)  # a CPU-only install: auto falls back, triton is refused
    assert resolve_decode_backend("auto", "cuda") == "torch"
    with pytest.raises(MmmambaError, match="needs Triton"):
        resolve_decode_backend("triton", "cuda")
