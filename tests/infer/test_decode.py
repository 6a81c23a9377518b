"""The static decode path (ModelCache, Decoder.decode_step, DecodeStep), the decode-attention
kernel and the scan backends, against plain references in float64 (CPU; the GPU-only modes run
in tests/gpu/check_kernels.py on the device)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mmmamba.convert import convert_to_mamba
from mmmamba.errors import MmmambaError
from mmmamba.infer import ChatSession, generate
from mmmamba.infer.decode_step import DecodeStep, resolve_mode
from mmmamba.infer.generate import left_pad, prefill
from mmmamba.models import Decoder
from mmmamba.ops import ssd_chunked_scan
from mmmamba.ops.decode_attention import decode_attention, decode_attention_reference
from mmmamba.ops.ssd import resolve_backend, ssd_scan
from tests.conftest import tiny_config


def tiny(kind: str, layers: int = 4, theta: float = 1e4) -> Decoder:
    torch.manual_seed(0)
    cfg = tiny_config(hidden_size=48, num_layers=layers, num_heads=6, intermediate_size=40, max_position=128,
                      rope_theta=theta, vision=None, image_token_id=None)  # fmt: skip
    teacher = Decoder(cfg)
    for p in teacher.parameters():  # larger than the default init: logits that differ per token
        p.data.normal_(0, 0.3)
    if kind == "teacher":
        return teacher.double()
    keep = [] if kind == "linear" else [1, 3]
    return convert_to_mamba(teacher, keep).double()


def decode_both_ways(model: Decoder, prompts, steps: int, mode: str = "eager", fuse: bool = False):
    """Logits of ``steps`` greedy tokens through forward() and through the static step, side by side."""
    ids, mask = left_pad(prompts, 0)
    c_forward, c_static = model.make_cache(len(prompts), 64), model.make_cache(len(prompts), 64)
    first = prefill(model, model.embed(ids), mask, c_forward)
    prefill(model, model.embed(ids), mask, c_static, chunk_size=3)  # chunked prefill fills the same state
    if fuse:
        model.fuse_projections()
    step = DecodeStep(model, c_static, mode)
    token = first.argmax(-1)
    pairs = []
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        ref = model(token[:, None], attention_mask=mask, cache=c_forward).logits[:, -1]
        pairs.append((step(token), ref))
        token = ref.argmax(-1)
    return pairs


@pytest.mark.parametrize("kind", ["teacher", "linear", "hybrid"])
@pytest.mark.parametrize("fuse", [False, True])
def test_static_decode_step_equals_forward(kind, fuse):
    model = tiny(kind)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]]  # left padding
    for static, ref in decode_both_ways(model, prompts, steps=9, fuse=fuse):
        torch.testing.assert_close(static, ref, rtol=1e-10, atol=1e-10)


def test_static_decode_with_two_rope_thetas():
    """Layers with their own RoPE base (per-stack settings) each get their table."""
    model = tiny("teacher")
    model.layers[2].mixer.cfg.rope_theta = 5e5
    for static, ref in decode_both_ways(model, [[3, 4, 5, 6], [7, 8]], steps=5):
        torch.testing.assert_close(static, ref, rtol=1e-10, atol=1e-10)


def test_chat_turns_keep_the_static_cache_in_step():
    """Turns through ChatSession (one static step for the session) equal greedy decoding of the whole history
    by a cache-free forward."""
    model = tiny("hybrid")

    class Tok:  # the minimum ChatSession needs
        stop_ids = (0,)

        def user_turn(self, text, first=True, image_tokens=None):
            return [int(c) % 60 + 1 for c in text]

    chat = ChatSession(model, Tok(), max_length=100)
    history: list[int] = []
    for text in ("1234", "98", "55555"):
        history += chat.pending + Tok().user_turn(text)
        answer = chat.ask(text, max_new_tokens=4)
        for i, token in enumerate(answer):
            assert token == int(model(torch.tensor([history])).logits[0, -1].argmax())
            if i < len(answer) - 1:  # the last one is fed at the next turn
                history.append(token)
    assert chat.step is not None and chat.step.mode == "eager"
    assert int(chat.cache.slot) == chat.cache.length == len(history)


def test_generate_static_equals_forward_decode():
    model = tiny("hybrid")
    prompts = [[5, 6, 7, 8, 9], [12, 13]]
    new = generate(model, prompts, max_new_tokens=6, decode="eager")
    ids, mask = left_pad(prompts, 0)
    cache = model.make_cache(2, 64)
    logits = prefill(model, model.embed(ids), mask, cache)
    expect = [[], []]
    for _ in range(6):
        token = logits.argmax(-1)
        for row in range(2):
            expect[row].append(int(token[row]))
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        logits = model(token[:, None], attention_mask=mask, cache=cache).logits[:, -1]
    assert new == expect


def test_full_cache_is_refused_before_the_device_would_assert():
    model = tiny("teacher", layers=2)
    cache = model.make_cache(1, 5)
    logits = prefill(model, model.embed(torch.tensor([[1, 2, 3, 4]])), torch.ones(1, 4, dtype=torch.long), cache)
    step = DecodeStep(model, cache, "eager")
    step(logits.argmax(-1))  # slot 4: the last one
    with pytest.raises(MmmambaError, match="full"):
        step(logits.argmax(-1))


def test_snapshot_restore_round_trip():
    model = tiny("hybrid")
    cache = model.make_cache(2, 32)
    prefill(model, model.embed(torch.tensor([[1, 2, 3], [4, 5, 6]])), torch.ones(2, 3, dtype=torch.long), cache)
    saved = cache.snapshot()
    before = {n: b.clone() for n, b in cache.named_buffers()}
    model.decode_step(torch.tensor([7, 8]), cache)
    cache.restore(saved)
    for n, b in cache.named_buffers():
        if not n.endswith((".k", ".v")):
            assert torch.equal(b, before[n]), n
    assert int(cache.slot) == 3


def test_logits_to_keep_is_the_tail_of_the_full_logits():
    model = tiny("hybrid")
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    full = model(ids).logits
    torch.testing.assert_close(model(ids, logits_to_keep=2).logits, full[:, -2:])


def test_decode_modes_are_checked():
    assert resolve_mode("auto", torch.device("cpu")) == "eager"
    for bad in ("graph", "compile"):
        with pytest.raises(MmmambaError, match="CUDA"):
            resolve_mode(bad, torch.device("cpu"))
    with pytest.raises(MmmambaError, match="unknown"):
        resolve_mode("fast", torch.device("cpu"))
    with pytest.raises(MmmambaError, match="CUDA"):
        generate(tiny("linear"), [[1, 2]], max_new_tokens=3, decode="graph")


def test_scan_backends_are_configuration():
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("torch", "cuda") == "torch"
    with pytest.raises(MmmambaError, match="unknown"):
        resolve_backend("triton", "cpu")
    with pytest.raises(MmmambaError):
        resolve_backend("fla", "cpu")  # not installed here, or not a CUDA tensor: refused either way
    model = tiny("hybrid")
    model.set_backends(ssd="torch", decode_attention="torch")
    assert {layer.mixer.cfg.ssd_backend for layer in model.layers if hasattr(layer.mixer.cfg, "ssd_backend")} == {
        "torch"
    }
    with pytest.raises(MmmambaError):
        model.set_backends(ssd="cuda-magic")


def test_packed_scan_restarts_the_state_at_each_sample():
    torch.manual_seed(1)
    lengths = [5, 1, 9, 4]
    L, h, p, n = sum(lengths), 3, 4, 5
    x, B, C = torch.randn(1, L, h, p).double(), torch.randn(1, L, h, n).double(), torch.randn(1, L, h, n).double()
    dt, A = torch.rand(1, L, h).double() * 0.5, -torch.rand(h).double()
    cu = torch.tensor([0, 5, 6, 15, 19])
    y, states = ssd_scan(x, dt, A, B, C, backend="torch", cu_seqlens=cu)
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        y_i, st_i = ssd_chunked_scan(x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e], chunk_size=4)
        torch.testing.assert_close(y[:, s:e], y_i)
        torch.testing.assert_close(states[i : i + 1], st_i)


@pytest.mark.parametrize("b,h,kvh,S,d,length", [(2, 6, 2, 37, 8, 30), (1, 4, 4, 9, 16, 9), (3, 9, 3, 50, 8, 1)])
def test_decode_attention_reference_is_masked_softmax(b, h, kvh, S, d, length):
    torch.manual_seed(2)
    q, k, v = torch.randn(b, h, d).double(), torch.randn(b, kvh, S, d).double(), torch.randn(b, kvh, S, d).double()
    valid = torch.rand(b, S) > 0.3
    valid[:, length - 1] = True
    out = decode_attention(q, k, v, valid, torch.tensor(length), backend="auto")  # CPU: the reference
    group = h // kvh
    for row in range(b):
        for head in range(h):
            keys = [s for s in range(length) if valid[row, s]]
            kk, vv = k[row, head // group, keys], v[row, head // group, keys]
            w = torch.softmax(kk @ q[row, head] / d**0.5, 0)
            torch.testing.assert_close(out[row, head], w @ vv)


def test_decode_attention_triton_kernel_in_the_interpreter():
    """The Triton split-K kernel, run by Triton's CPU interpreter (a fresh process: the flag is read at import)."""
    pytest.importorskip("triton")
    code = textwrap.dedent(
        """
        import torch
        from mmmamba.ops.decode_attention import decode_attention_reference, decode_attention_triton
        torch.manual_seed(0)
        worst = 0.0
        for b, h, kvh, S, d, length, block in [(2, 4, 2, 37, 16, 30, 16), (1, 3, 1, 70, 32, 70, 16),
                                               (3, 8, 2, 45, 16, 5, 32), (1, 4, 4, 20, 16, 13, 16)]:
            q, k, v = torch.randn(b, h, d), torch.randn(b, kvh, S, d), torch.randn(b, kvh, S, d)
            valid = torch.rand(b, S) > 0.3
            valid[:, length - 1] = True
            n = torch.tensor(length)
            out = decode_attention_triton(q, k, v, valid, n, block_n=block, target_programs=8)
            ref = decode_attention_reference(q.double(), k.double(), v.double(), valid, n)
            worst = max(worst, (out.double() - ref).abs().max().item())
        print(worst)
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.strip().splitlines()[-1]) < 1e-5


def test_decode_attention_reference_matches_sdpa_on_a_full_cache():
    torch.manual_seed(3)
    q, k, v = torch.randn(2, 4, 8).double(), torch.randn(2, 2, 11, 8).double(), torch.randn(2, 2, 11, 8).double()
    out = decode_attention_reference(q, k, v, torch.ones(2, 11, dtype=torch.bool), torch.tensor(11))
    ref = torch.nn.functional.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True)[:, :, 0]
    torch.testing.assert_close(out, ref)
