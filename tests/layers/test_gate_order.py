"""The mixer's gate order (norm-first: the paper's; gate-first: Mamba-2's) is honoured by every scan
path, the recurrent step, chunked prefill, packed training rows, the static decode, the seeding and
the distillation stages, against a float64 reference that runs the recurrence token by token."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mmmamba.convert import convert_to_mamba
from mmmamba.distill.stages import STAGES, select_trainable
from mmmamba.errors import MmmambaError
from mmmamba.formats import load_checkpoint, save_checkpoint
from mmmamba.formats.official import export_official
from mmmamba.infer.decode_step import DecodeStep
from mmmamba.infer.generate import left_pad, prefill
from mmmamba.layers import Mamba2Config, Mamba2Mixer
from mmmamba.models import Decoder
from tests.conftest import tiny_config

F64 = torch.float64
ORDERS = ["norm-first", "gate-first"]


def reference_mix(m: Mamba2Mixer, u: torch.Tensor) -> torch.Tensor:
    """The mixer's output before o_proj, (b, L, h·hd), one token at a time in float64 (SPEC §3 + the gate order)."""
    cfg = m.cfg
    h, kvh, hd, k = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.conv_kernel
    u = u.to(F64)
    lin = lambda mod: F.linear(u, mod.weight.to(F64), None if mod.bias is None else mod.bias.to(F64))  # noqa: E731
    xbc = torch.cat([lin(m.v_proj), lin(m.k_proj), lin(m.q_proj)], -1)  # (b, L, conv_dim)
    b, L, _ = xbc.shape
    padded = torch.cat([xbc.new_zeros(b, k - 1, xbc.shape[-1]), xbc], 1)
    w = m.conv_weight.to(F64)
    conv = torch.stack([(padded[:, t : t + k] * w.T).sum(1) for t in range(L)], 1) + m.conv_bias.to(F64)
    conv = F.silu(conv)
    x, B, C = conv.split([kvh * hd, kvh * hd, h * hd], -1)
    x = x.unflatten(-1, (kvh, hd)).repeat_interleave(h // kvh, -2)  # (b, L, h, hd)
    B = B.unflatten(-1, (kvh, hd)).repeat_interleave(h // kvh, -2)
    C = C.unflatten(-1, (h, hd))
    dt = F.softplus(lin(m.dt_proj) + m.dt_bias.to(F64))  # (b, L, h)
    A = -torch.exp(m.A_log.to(F64))
    S = x.new_zeros(b, h, hd, hd)
    ys = []
    for t in range(L):
        S = (
            torch.exp(dt[:, t] * A)[..., None, None] * S
            + dt[:, t, :, None, None] * x[:, t, :, :, None] * B[:, t, :, None]
        )
        ys.append(torch.einsum("bhpn,bhn->bhp", S, C[:, t]))
    y = torch.stack(ys, 1)  # (b, L, h, hd)
    z = lin(m.g_proj).unflatten(-1, (h, hd))
    weight, eps = m.out_norm.weight.to(F64), cfg.norm_eps
    rms = lambda t: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps)  # noqa: E731
    out = weight * rms(y) * F.silu(z) if cfg.gate_order == "norm-first" else weight * rms(y * F.silu(z))
    return out.flatten(-2)


def random_mixer(order: str, heads: int, kv_heads: int, head_dim: int, kernel: int, seed: int) -> Mamba2Mixer:
    torch.manual_seed(seed)
    cfg = Mamba2Config(24, heads, kv_heads, head_dim, conv_kernel=kernel, chunk_size=4, gate_order=order)
    m = Mamba2Mixer(cfg).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.4)
        m.A_log.uniform_(-1, 1)
    return m


SHAPES = [(4, 2, 8, 2), (6, 2, 4, 4), (3, 3, 5, 3), (4, 1, 6, 1)]  # heads, kv heads, head_dim, conv kernel


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_scan_path_honours_the_gate_order(order, shape):
    m = random_mixer(order, *shape, seed=sum(shape))
    u = torch.randn(2, 11, 24, dtype=F64)  # 11: not a multiple of the chunk (4)
    ref = reference_mix(m, u)
    torch.testing.assert_close(m.mix(u), ref, rtol=1e-9, atol=1e-9)  # chunked scan, whole sequence
    cache = m.make_cache(2, 64, F64)
    pieces = [m.mix(u[:, :5], cache=cache), m.mix(u[:, 5:6], cache=cache), m.mix(u[:, 6:], cache=cache)]
    torch.testing.assert_close(torch.cat(pieces, 1), ref, rtol=1e-9, atol=1e-9)  # chunked prefill + 1-token mix
    cache = m.make_cache(2, 64, F64)
    steps = [m.step(u[:, t], cache) for t in range(u.shape[1])]  # the static decode step
    torch.testing.assert_close(torch.stack(steps, 1), ref, rtol=1e-9, atol=1e-9)
    packed = torch.cat([u[0, :7], u[1, :4]])[None]  # two samples in one row
    cu = torch.tensor([0, 7, 11])
    want = torch.cat([reference_mix(m, u[:1, :7]), reference_mix(m, u[1:, :4])], 1)
    torch.testing.assert_close(m.mix(packed, cu_seqlens=cu), want, rtol=1e-9, atol=1e-9)


def test_the_two_orders_differ_and_gate_first_is_scale_free_in_the_gate():
    """Not a relabelling: the orders give different outputs; gate-first renormalises away a gate scale."""
    a = random_mixer("norm-first", 4, 2, 8, 2, seed=3)
    b = random_mixer("gate-first", 4, 2, 8, 2, seed=3)
    u = torch.randn(1, 9, 24, dtype=F64)
    assert (a.mix(u) - b.mix(u)).abs().max() > 1e-2
    y = torch.randn(9, 4, 8, dtype=F64)
    g = torch.randn(9, 4, 8, dtype=F64).abs() + 3.0
    one = b.out_norm(y, g)
    torch.testing.assert_close(b.out_norm(y * 5.0, g), one, rtol=1e-6, atol=1e-6)


def tiny_teacher(seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    cfg = tiny_config(hidden_size=48, num_heads=6, intermediate_size=40, max_position=128, vision=None,
                      image_token_id=None)  # fmt: skip
    teacher = Decoder(cfg)
    for p in teacher.parameters():
        p.data.normal_(0, 0.3)
    return teacher.double()


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("keep", [[], [1, 3]])
def test_static_decode_of_a_student_honours_the_gate_order(order, keep):
    student = convert_to_mamba(tiny_teacher(), keep, mamba={"gate_order": order}).eval()
    with torch.no_grad():
        for layer in student.layers:
            if hasattr(layer.mixer, "g_proj"):
                layer.mixer.g_proj.weight.normal_(0, 0.5)  # a gate far from its seed
                layer.mixer.out_norm.weight.normal_(1, 0.3)
    mixers = [layer.mixer for layer in student.layers if hasattr(layer.mixer, "g_proj")]
    assert all(m.cfg.gate_order == order for m in mixers)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
    ids, mask = left_pad(prompts, 0)
    c_forward, c_static = student.make_cache(2, 64), student.make_cache(2, 64)
    token = prefill(student, student.embed(ids), mask, c_forward).argmax(-1)
    prefill(student, student.embed(ids), mask, c_static, chunk_size=3)
    step = DecodeStep(student, c_static, "eager")
    for _ in range(6):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        ref = student(token[:, None], attention_mask=mask, cache=c_forward).logits[:, -1]
        torch.testing.assert_close(step(token), ref, rtol=1e-10, atol=1e-10)
        token = ref.argmax(-1)
    # the layer's forward is the reference mixer's, whichever order
    u = torch.randn(1, 7, 48, dtype=F64)
    torch.testing.assert_close(mixers[0].mix(u), reference_mix(mixers[0], u), rtol=1e-9, atol=1e-9)


def test_gate_order_is_saved_and_old_configs_load_norm_first(tmp_path):
    student = convert_to_mamba(tiny_teacher(), [1], mamba={"gate_order": "gate-first"}).float()
    save_checkpoint(student, tmp_path / "s")
    assert json.loads((tmp_path / "s/config.json").read_text())["mamba"]["gate_order"] == "gate-first"
    assert load_checkpoint(tmp_path / "s").layers[0].mixer.cfg.gate_order == "gate-first"
    raw = json.loads((tmp_path / "s/config.json").read_text())
    del raw["mamba"]["gate_order"]  # a checkpoint written before the option existed
    (tmp_path / "s/config.json").write_text(json.dumps(raw))
    assert load_checkpoint(tmp_path / "s").layers[0].mixer.cfg.gate_order == "norm-first"
    with pytest.raises(MmmambaError, match="gate_order"):
        tiny_config(mixers=["mamba2"] * 4, mamba={"gate_order": "gate-last"})


def test_every_stage_trains_the_gate_first_norm_and_gate():
    student = convert_to_mamba(tiny_teacher(), [2], mamba={"gate_order": "gate-first"})
    for stage in STAGES.values():
        names = {n for n, _ in select_trainable(student, stage)}
        assert {"layers.0.mixer.out_norm.weight", "layers.0.mixer.g_proj.weight"} <= names
    u = torch.randn(1, 5, 48, dtype=F64)
    student.layers[0].mixer.mix(u).square().sum().backward()
    assert student.layers[0].mixer.out_norm.weight.grad.abs().sum() > 0


def test_official_export_refuses_gate_first(tmp_path):
    student = convert_to_mamba(tiny_teacher(), [], mamba={"gate_order": "gate-first"})
    with pytest.raises(MmmambaError, match="gate order gate-first.*--gate-order norm-first"):
        export_official(student, tmp_path / "out")


def test_convert_cli_stores_the_gate_order(tmp_path, capsys):
    from mmmamba.cli.main import main
    from mmmamba.data.tokenizer import ByteTokenizer

    save_checkpoint(tiny_teacher().float(), tmp_path / "t", extra=ByteTokenizer().save)
    for order in ORDERS:
        out = tmp_path / order
        assert main(["convert", "--teacher", str(tmp_path / "t"), "--out", str(out), "--gate-order", order]) == 0
        assert json.loads((out / "config.json").read_text())["mamba"]["gate_order"] == order
        assert load_checkpoint(out).layers[0].mixer.out_norm.__class__.__name__ == (
            "GatedHeadNorm" if order == "norm-first" else "GateFirstHeadNorm"
        )
    bad = ["convert", "--teacher", str(tmp_path / "t"), "--out", str(tmp_path / "x"), "--gate-order", "last"]
    assert main(bad) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_convert_cli_default_is_gate_first_for_text_teachers_and_norm_first_with_a_vision_stem(tmp_path, capsys):
    """``--gate-order auto`` (the default): a text-only teacher's student is one the engines serve; a VLM
    teacher's keeps the paper's order, which ``export --format mmmamba-official`` needs."""
    from mmmamba.cli.main import main
    from mmmamba.data.tokenizer import ByteTokenizer

    vlm = tiny_config(hidden_size=48, num_heads=6, intermediate_size=40, max_position=128,
                      vision={"image_size": 8, "patch_size": 4}, image_token_id=5)  # fmt: skip
    teachers = {"gate-first": tiny_teacher().float(), "norm-first": Decoder(vlm).float()}
    for order, teacher in teachers.items():
        save_checkpoint(teacher, tmp_path / f"t-{order}", extra=ByteTokenizer().save)
        out = tmp_path / f"s-{order}"
        assert main(["convert", "--teacher", str(tmp_path / f"t-{order}"), "--out", str(out)]) == 0
        assert json.loads((out / "config.json").read_text())["mamba"]["gate_order"] == order
        assert order in capsys.readouterr().out
