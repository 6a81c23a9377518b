"""Packed sequences (several samples in one row, cu_seqlens) compute exactly what the padded batch does."""

import pytest
import torch

from mmmamba.convert import convert_to_mamba
from mmmamba.data.conversations import Example, collate, pack
from mmmamba.distill.stages import STAGES, select_trainable, stage_loss
from mmmamba.errors import MmmambaError
from mmmamba.layers import Mamba2Mixer
from mmmamba.models import Decoder, DecoderConfig
from mmmamba.ops import causal_conv1d

LENGTHS = (5, 11, 1, 8)


def models():
    torch.manual_seed(0)
    cfg = DecoderConfig(
        vocab_size=40, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=48
    )
    teacher = Decoder(cfg).double().eval()
    student = convert_to_mamba(teacher, [1]).double()  # hybrid: attention in layer 1
    for m in student.modules():  # move the seeded conv/Δ away from identity so a leak would show
        if isinstance(m, Mamba2Mixer):
            with torch.no_grad():
                m.conv_weight.add_(0.3 * torch.randn_like(m.conv_weight))
                m.dt_bias.add_(1.0)
    return teacher, student


def examples():
    g = torch.Generator().manual_seed(1)
    out = []
    for n in LENGTHS:
        ids = torch.randint(1, 40, (n,), generator=g).tolist()
        first = len(out) % 2 == 1  # a text window's first token is in its mask too (`data text`: every token)
        mask = [first] + (torch.rand(n - 1, generator=g) > 0.4).tolist()
        out.append(Example(ids, mask, None))
    return out


def test_packed_conv_restarts_at_each_sample():
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(1, 25, 6, generator=g), torch.randn(6, 3, generator=g), torch.randn(6, generator=g)
    cu = torch.tensor([0, 5, 16, 17, 25])
    y, state = causal_conv1d(x, w, b, cu_seqlens=cu)
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        ref, ref_state = causal_conv1d(x[:, s:e], w, b)
        torch.testing.assert_close(y[:, s:e], ref)
        torch.testing.assert_close(state[i : i + 1], ref_state)


def test_packed_forward_equals_each_sample_alone():
    teacher, student = models()
    ex = examples()
    packed = pack(ex)
    ones = torch.ones_like(packed.input_ids)
    for model in (teacher, student):
        # one sample a row inside the ops, or (with an attention mask) the block-diagonal L × L mask
        for mask in (None, ones):
            out = model(packed.input_ids, attention_mask=mask, cu_seqlens=packed.cu_seqlens).logits
            starts = packed.cu_seqlens.tolist()
            for e, s in zip(ex, starts):
                alone = model(torch.tensor([e.ids])).logits
                torch.testing.assert_close(out[:, s : s + len(e.ids)], alone, rtol=1e-10, atol=1e-10)


def test_packed_row_longer_than_max_position_needs_only_its_samples_to_fit():
    """Positions restart at each sample, so a packed row may exceed max_position; a sample may not."""
    teacher, student = models()
    for model in (teacher, student):
        model.config.max_position = max(LENGTHS)  # the row holds sum(LENGTHS) = 25 tokens
        ex = examples()
        packed = pack(ex)
        out = model(packed.input_ids, cu_seqlens=packed.cu_seqlens).logits
        for e, s in zip(ex, packed.cu_seqlens.tolist()):
            alone = model(torch.tensor([e.ids])).logits
            torch.testing.assert_close(out[:, s : s + len(e.ids)], alone, rtol=1e-10, atol=1e-10)
        model.config.max_position = max(LENGTHS) - 1
        with pytest.raises(MmmambaError, match=f"sequence of {max(LENGTHS)} tokens exceeds the model's max_position"):
            model(packed.input_ids, cu_seqlens=packed.cu_seqlens)


def loss_and_grads(stage, teacher, student, params, batch):
    student.zero_grad(set_to_none=True)
    loss = stage_loss(stage, teacher, student, batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for _, p in params]


@pytest.mark.parametrize("stage_id", [1, 2, 3])
def test_packed_loss_and_gradients_equal_the_padded_batch(stage_id):
    teacher, student = models()
    stage = STAGES[stage_id].with_options(ce_weight=0.5)
    params = select_trainable(student, stage)
    ex = examples()
    (a, ga), (b, gb) = (loss_and_grads(stage, teacher, student, params, x) for x in (collate(ex, 0), pack(ex)))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("stage_id", [1, 2, 3])
@pytest.mark.parametrize("packed", [False, True])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(stage_id, packed):
    """Decoder.checkpoint_layers (distill --checkpoint-activations) recomputes each layer (stage 3) or
    mixer (stages 1-2) in backward: the loss and every gradient are those of the plain backward, in
    float64, padded or packed."""
    teacher, student = models()
    stage = STAGES[stage_id].with_options(ce_weight=0.5, train_mlp=stage_id == 3)
    params = select_trainable(student, stage)
    ex = examples()
    batch = pack(ex) if packed else collate(ex, 0)
    results = []
    for on in (False, True):
        student.checkpoint_layers = on
        results.append(loss_and_grads(stage, teacher, student, params, batch))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-14)


def test_one_unpacker_per_packed_batch(monkeypatch):
    """Layers share the batch's Unpacker: building one reads the longest length back from the GPU (a sync)."""
    from mmmamba.ops.packing import Unpacker

    built = []
    init = Unpacker.__init__
    monkeypatch.setattr(Unpacker, "__init__", lambda self, *a: (built.append(1), init(self, *a))[1])
    teacher, student = models()
    batch = pack([Example(list(range(1, n + 1)), [True] * n, None) for n in LENGTHS])
    with torch.no_grad():
        teacher(batch.input_ids, cu_seqlens=batch.cu_seqlens)  # 3 attention layers
    assert len(built) == 1
    with torch.no_grad():
        student(batch.input_ids, cu_seqlens=batch.cu_seqlens)  # same tensor: reused
    assert len(built) == 1
    other = batch.cu_seqlens.clone()
    assert Unpacker.of(other, batch.input_ids.shape[1], "cpu") is not Unpacker.of(batch.cu_seqlens, 25, "cpu")
    rows = Unpacker.of(other, 25, "cpu")
    other[1:] = torch.tensor([25, 25, 25, 25], dtype=other.dtype)  # changed in place: rebuilt
    assert Unpacker.of(other, 25, "cpu") is not rows and Unpacker.of(other, 25, "cpu").width == 25
