"""Runtime: cached decode equals the full forward, chunked prefill equals one shot, batches equal
single prompts, Mamba-2 state does not grow, and the chat keeps its state between turns."""

import pytest
import torch

import mmmamba
from mmmamba.convert import convert_to_mamba
from mmmamba.data.tokenizer import ByteTokenizer
from mmmamba.infer import ChatSession, SamplingConfig, generate, prefill, sample_next
from mmmamba.layers import KVCache, Mamba2State
from mmmamba.models import Decoder
from tests.conftest import tiny_config

F64 = torch.float64
KINDS = {"teacher": [0, 1, 2, 3], "linear": [], "hybrid": [1, 3]}


def model_of(kind, teacher):
    return teacher if kind == "teacher" else convert_to_mamba(teacher, KINDS[kind])


def perturb_ssm(model):
    """Give decay and conv non-trivial values so the tests exercise them."""
    torch.manual_seed(5)
    with torch.no_grad():
        for layer in model.layers:
            if isinstance(layer.mixer, mmmamba.layers.Mamba2Mixer):
                layer.mixer.dt_bias.uniform_(-2, 1)
                layer.mixer.conv_weight.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("kind", list(KINDS))
def test_prefill_plus_decode_steps_equal_full_forward(teacher, kind):
    model = perturb_ssm(model_of(kind, teacher))
    ids = torch.cat([torch.tensor([[1, 2]]), torch.full((1, 4), 60), torch.randint(0, 59, (1, 12))], 1)
    pixels = torch.randn(1, 3, 8, 8, dtype=F64)
    full = model(ids, pixel_values=pixels).logits
    cache = model.make_cache(1, 32)
    mask = torch.ones(1, ids.shape[1], dtype=torch.long)
    embeds = model.embed(ids, pixels)
    last = prefill(model, embeds[:, :10], mask[:, :10], cache)
    torch.testing.assert_close(last, full[:, 9], rtol=1e-10, atol=1e-10)
    for t in range(10, ids.shape[1]):
        step = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache).logits[:, -1]
        torch.testing.assert_close(step, full[:, t], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", list(KINDS))
def test_chunked_prefill_equals_one_shot(teacher, kind):
    model = perturb_ssm(model_of(kind, teacher))
    ids = torch.cat([torch.randint(0, 59, (2, 5)), torch.full((2, 4), 60), torch.randint(0, 59, (2, 91))], 1)
    pixels = torch.randn(2, 3, 8, 8, dtype=F64)
    mask = torch.ones_like(ids)
    embeds = model.embed(ids, pixels)
    ref_cache = model.make_cache(2, 128)
    ref = prefill(model, embeds, mask, ref_cache)
    for chunk in (1, 7, 64, None):
        cache = model.make_cache(2, 128)
        torch.testing.assert_close(prefill(model, embeds, mask, cache, chunk), ref, rtol=1e-10, atol=1e-10)
        for c, r in zip(cache, ref_cache):
            for b, rb in zip(c.buffers(), r.buffers()):
                torch.testing.assert_close(b, rb, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", list(KINDS))
def test_batch_of_ragged_prompts_gives_each_prompt_its_own_tokens(teacher, kind):
    model = perturb_ssm(model_of(kind, teacher))
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 59, (n,), generator=g).tolist() for n in (3, 17, 40)]
    batch = generate(model, prompts, max_new_tokens=8)
    alone = [generate(model, [p], max_new_tokens=8)[0] for p in prompts]
    assert batch == alone
    assert len({tuple(a) for a in alone}) > 1  # not a degenerate constant output


def cache_sizes(cache):
    return [(type(c).__name__, sum(b.numel() for b in c.buffers()), c.length) for c in cache]


def test_state_size_is_constant_and_only_attention_caches_grow(teacher):
    model = convert_to_mamba(teacher, [1])
    cache = model.make_cache(1, 64)
    prefill(model, model.embed(torch.randint(0, 59, (1, 5))), torch.ones(1, 5, dtype=torch.long), cache)
    before = cache_sizes(cache)
    for t in range(20):
        model(torch.tensor([[t]]), attention_mask=torch.ones(1, 6 + t, dtype=torch.long), cache=cache)
    after = cache_sizes(cache)
    for (_, n0, len0), (_, n1, len1) in zip(before, after):
        assert n0 == n1  # buffers never reallocate
        assert len1 - len0 == 20
    for c in cache:
        if isinstance(c, Mamba2State):  # the whole state is the fixed-size buffers
            assert c.ssm.shape == (1, 4, 8, 8) and c.conv.shape[1] == 1
        else:
            assert isinstance(c, KVCache) and c.length == 25  # attention holds one entry per token


def test_chat_keeps_state_between_turns():
    torch.manual_seed(0)
    tok = ByteTokenizer(image_tokens=4)
    model = convert_to_mamba(Decoder(tiny_config(vocab_size=tok.vocab_size, image_token_id=tok.image_token_id)), [2])
    model = perturb_ssm(model.double().eval())
    image = torch.randn(1, 3, 8, 8, dtype=F64)  # one tile
    chat = ChatSession(model, tok)
    a1 = chat.ask("what is this?", image=image, max_new_tokens=6)
    a2 = chat.ask("and then?", max_new_tokens=6)
    history = tok.user_turn("<image>\nwhat is this?") + a1 + tok.user_turn("and then?", first=False)
    expected = generate(model, [history], image, max_new_tokens=6, stop_ids=(tok.end_id,))[0]
    assert a2 == expected
    assert chat.tokens == len(history) + len(a2) - 1


def test_sampling_rules():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert sample_next(logits, SamplingConfig()).item() == 1
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, SamplingConfig(temperature=1.0, top_k=2), g).item() for _ in range(200)}
    assert draws == {1, 3}
    draws = {sample_next(logits, SamplingConfig(temperature=1.0, top_p=0.5), g).item() for _ in range(200)}
    assert draws == {1}  # the top token alone holds > 0.5 of the mass
    a = [sample_next(logits, SamplingConfig(1.0), torch.Generator().manual_seed(7)).item() for _ in range(2)]
    assert a[0] == a[1]


def test_prompt_too_long_is_refused(teacher):
    with pytest.raises(mmmamba.MmmambaError, match="max_position 512"):
        generate(teacher, [[1] * 500], max_new_tokens=20)


@pytest.mark.parametrize("chunk", [None, 1, 3, 5, 7])
def test_prefill_from_ids_embeds_each_chunk_as_the_whole_prompt(teacher, chunk):
    """prefill_ids embeds one chunk at a time: images cut by a chunk boundary, left padding, two rows."""
    from mmmamba.infer import prefill_ids
    from mmmamba.infer.generate import left_pad

    model = perturb_ssm(convert_to_mamba(teacher, [1]))
    img = model.config.image_token_id
    per = model.config.vision.tokens_per_tile  # 4 placeholders a tile
    prompts = [[5, 6, *[img] * per, 7, *[img] * per, 8], [9, *[img] * per, 10, 11]]  # 3 tiles in all
    ids, mask = left_pad(prompts, 0, "cpu")
    pixels = torch.randn(3, 3, 8, 8, dtype=F64)
    whole_cache, chunk_cache = (model.make_cache(2, ids.shape[1] + 1, dtype=F64) for _ in range(2))
    whole = prefill(model, model.embed(ids, pixels), mask, whole_cache)
    got = prefill_ids(model, ids, pixels, mask, chunk_cache, chunk)
    torch.testing.assert_close(got, whole, rtol=1e-10, atol=1e-10)
    for s in range(0, ids.shape[1], 3):  # every span equals the slice of the whole prompt's embeddings
        torch.testing.assert_close(
            model.embed_span(ids, s, s + 3, model.image_patches(ids, pixels)), model.embed(ids, pixels)[:, s : s + 3]
        )
    with pytest.raises(mmmamba.MmmambaError, match="placeholder"):
        prefill_ids(model, ids, pixels[:2], mask, model.make_cache(2, ids.shape[1] + 1, dtype=F64))
