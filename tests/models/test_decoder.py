import pytest
import torch

import mmmamba
from mmmamba.convert import convert_to_mamba

F64 = torch.float64


def image_prompt(n_patches=4, image_token=60):
    return torch.tensor([[1, 2] + [image_token] * n_patches + [3, 4, 5]])


def test_layer_io_reproduces_each_layer(teacher):
    ids = torch.randint(0, 59, (2, 10))
    out = teacher(ids, return_layer_io=True)
    assert out.logits.shape == (2, 10, 61)
    assert len(out.layer_inputs) == len(out.mixer_outputs) == 4
    for i, layer in enumerate(teacher.layers):
        x = out.layer_inputs[i]
        positions = torch.arange(10).expand(2, 10)
        mixed = layer.mixer.mix(layer.input_norm(x), positions)
        torch.testing.assert_close(out.mixer_outputs[i], mixed, rtol=0, atol=0)
        assert out.mixer_outputs[i].shape == (2, 10, 4 * 8)
        if i + 1 < 4:
            torch.testing.assert_close(layer(x, positions, None, None)[0], out.layer_inputs[i + 1])


def test_image_tokens_are_spliced_causally(teacher):
    ids = image_prompt()
    img_a, img_b = torch.randn(1, 3, 8, 8, dtype=F64), torch.randn(1, 3, 8, 8, dtype=F64)
    la = teacher(ids, pixel_values=img_a).logits
    lb = teacher(ids, pixel_values=img_b).logits
    torch.testing.assert_close(la[:, :2], lb[:, :2], rtol=0, atol=0)  # before the image: unaffected
    assert (la[:, 2:] - lb[:, 2:]).abs().amax(-1).min() > 1e-6  # from the image on: it matters
    emb = teacher.embed(ids, img_a)
    torch.testing.assert_close(emb[0, 2:6], teacher.vision(img_a)[0])


def test_wrong_number_of_placeholders_is_a_clear_error(teacher):
    with pytest.raises(mmmamba.MmmambaError, match="4 placeholders per tile"):
        teacher(image_prompt(n_patches=3), pixel_values=torch.randn(1, 3, 8, 8, dtype=F64))


def test_prompt_longer_than_the_model_allows(teacher):
    with pytest.raises(mmmamba.MmmambaError, match="max_position 512"):
        teacher(torch.zeros(1, 513, dtype=torch.long))


@pytest.mark.parametrize("keep", [[0, 1, 2, 3], [], [1]])
def test_prefill_then_decode_with_caches_matches_full_forward(teacher, keep):
    model = teacher if len(keep) == 4 else convert_to_mamba(teacher, keep)
    ids = torch.randint(0, 59, (2, 15))
    full = model(ids).logits
    cache = model.make_cache(batch=2, max_length=32)
    parts = [model(ids[:, :9], cache=cache).logits]
    parts += [model(ids[:, t : t + 1], cache=cache).logits for t in range(9, 15)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-10, atol=1e-10)


def test_left_padding_with_mask_matches_unpadded(teacher):
    model = convert_to_mamba(teacher, [2])
    ids = torch.randint(0, 59, (1, 8))
    padded = torch.cat([torch.full((1, 3), 7), ids], 1)
    mask = torch.tensor([[0, 0, 0] + [1] * 8])
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 3:], model(ids).logits)


@pytest.mark.parametrize("b,L", [(1, 5), (3, 17), (2, 33)])
def test_loss_from_predicting_positions_only_equals_full_logits_loss(teacher, b, L):
    """``next_token_loss`` (head applied only where a target is predicted) = ``masked_ce`` of the full
    logits, in value and in every parameter's gradient, float64, with images, padding-like holes and a
    target at the last position."""
    from mmmamba.training.losses import masked_ce, next_token_loss, predicting_positions

    g = torch.Generator().manual_seed(b * 100 + L)
    ids = torch.randint(0, 60, (b, L), generator=g)
    ids[:, 1 : 1 + 4] = 60  # one 8-pixel image = 4 patch placeholders per row
    pixels = torch.rand(b, 3, 8, 8, generator=g, dtype=torch.float64)
    mask = torch.rand(b, L, generator=g) < 0.4
    mask[:, :5] = False  # never a target inside the image
    mask[0, -1] = True
    total = mask[:, 1:].sum() + 3  # a global count larger than this piece's own
    assert predicting_positions(mask).sum() == mask[:, 1:].sum()

    def grads(loss):
        teacher.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in teacher.parameters() if p.grad is not None]

    full = masked_ce(teacher(ids, pixels).logits, ids, mask, total)
    full_grads = grads(full)
    rows = next_token_loss(teacher, ids, pixels, mask, total)
    torch.testing.assert_close(rows, full, rtol=1e-12, atol=1e-12)
    for a, c in zip(grads(rows), full_grads):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        next_token_loss(teacher, ids, pixels, mask), masked_ce(teacher(ids, pixels).logits, ids, mask)
    )  # the piece's own count when no total is given


def test_logits_at_and_logits_to_keep_are_exclusive(teacher):
    ids = torch.randint(0, 60, (1, 6))
    with pytest.raises(ValueError, match="not both"):
        teacher(ids, logits_to_keep=1, logits_at=torch.ones(1, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool mask of shape"):
        teacher(ids, logits_at=torch.ones(1, 6))  # float: would index, wrongly
    with pytest.raises(ValueError, match="bool mask of shape"):
        teacher(ids, logits_at=torch.ones(1, 5, dtype=torch.bool))
