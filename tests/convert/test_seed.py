"""Seeding copies the teacher's projections, never shares storage, and sets the SPEC §3 values."""

import math

import pytest
import torch

from mmmamba.convert import convert_to_mamba, seed_mamba_from_attention
from mmmamba.layers import Mamba2Mixer
from mmmamba.models import Decoder
from tests.conftest import tiny_config


def teacher_tensors(teacher):
    return {k: v.clone() for k, v in teacher.state_dict().items()}


def test_mimic_seeding_copies_projections_and_sets_spec_values(teacher):
    torch.manual_seed(0)
    attn = teacher.layers[1].mixer
    m = seed_mamba_from_attention(attn, init="mimic")
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert torch.equal(getattr(m, name).weight, getattr(attn, name).weight)
        assert getattr(m, name).weight.data_ptr() != getattr(attn, name).weight.data_ptr()
    k = m.cfg.conv_kernel
    assert k == 2
    assert torch.equal(m.conv_weight[:, -1], torch.ones_like(m.conv_weight[:, -1]))
    assert torch.count_nonzero(m.conv_weight[:, : k - 1]) == 0
    assert torch.count_nonzero(m.conv_bias) == 0
    assert torch.count_nonzero(m.dt_proj.weight) == 0
    assert torch.equal(m.A_log, torch.ones_like(m.A_log))
    dt0 = torch.nn.functional.softplus(m.dt_bias)
    assert bool(((dt0 >= 1e-3 - 1e-12) & (dt0 <= 0.1 + 1e-12)).all())
    assert torch.equal(m.out_norm.weight, torch.ones_like(m.out_norm.weight))
    # xavier-uniform with gain 2^-2.5: bound = gain · sqrt(6 / (fan_in + fan_out))
    fan_out, fan_in = m.g_proj.weight.shape
    bound = 2**-2.5 * math.sqrt(6 / (fan_in + fan_out))
    assert m.g_proj.weight.abs().max() <= bound and m.g_proj.weight.abs().max() > 0.5 * bound


def test_dt_bias_is_log_uniform_over_many_heads():
    big = Decoder(tiny_config(num_heads=256, num_kv_heads=256, head_dim=1, hidden_size=256, num_layers=1))
    torch.manual_seed(0)
    m = seed_mamba_from_attention(big.layers[0].mixer, init="mimic")
    log_dt = torch.log(torch.nn.functional.softplus(m.dt_bias.double()))
    lo, hi = math.log(1e-3), math.log(0.1)
    assert log_dt.min() >= lo - 1e-6 and log_dt.max() <= hi + 1e-6
    assert abs(log_dt.mean().item() - (lo + hi) / 2) < 0.35  # centred in log space, not in linear space


def test_plain_and_scratch_inits(teacher):
    attn = teacher.layers[0].mixer
    plain = seed_mamba_from_attention(attn, init="inherit")
    assert torch.equal(plain.q_proj.weight, attn.q_proj.weight)
    assert torch.count_nonzero(plain.dt_bias) == 0
    A = torch.exp(plain.A_log)
    assert bool(((A >= 1) & (A <= 16)).all())
    assert torch.count_nonzero(plain.conv_weight[:, :-1]) > 0  # default conv, not identity
    scratch = seed_mamba_from_attention(attn, init="scratch")
    assert not torch.equal(scratch.q_proj.weight, attn.q_proj.weight)


@pytest.mark.parametrize("keep", [[], [0, 2]])
def test_student_training_step_leaves_teacher_untouched(teacher, keep):
    before = teacher_tensors(teacher)
    student = convert_to_mamba(teacher, keep)
    assert student.config.mixers == ["attention" if i in keep else "mamba2" for i in range(4)]
    assert all(isinstance(student.layers[i].mixer, Mamba2Mixer) != (i in keep) for i in range(4))
    teacher_ptrs = {p.data_ptr() for p in teacher.parameters()}
    assert not teacher_ptrs & {p.data_ptr() for p in student.parameters()}
    for i in keep:  # kept attention layers start as exact copies of the teacher's
        for name, value in student.layers[i].state_dict().items():
            assert torch.equal(value, before[f"layers.{i}.{name}"]), name
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    ids = torch.randint(0, 59, (2, 9))
    student(ids).logits.square().mean().backward()
    opt.step()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name
    moved = [n for n, p in student.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert "layers.1.mixer.q_proj.weight" in moved  # the student did train
