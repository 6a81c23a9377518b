"""``prefill_mode="compile"`` (ops.regions): the layers' elementwise work compiled by torch.compile gives what the
eager layers give, in float64, for every model kind, over chunked, left-padded prefill at odd chunk sizes; the
caches it leaves decode the same next tokens; training (autograd) never takes the compiled path."""

import pytest
import torch

from mmmamba.convert import convert_to_mamba
from mmmamba.errors import MmmambaError
from mmmamba.infer.generate import left_pad, prefill
from mmmamba.models import Decoder, DecoderConfig
from mmmamba.ops import regions


@pytest.fixture(autouse=True)
def aot_eager(monkeypatch):
    """Trace and partition with torch.compile as Inductor would see the regions, without a C++ build (CI);
    the Inductor kernels themselves are checked on the GPU (tests/gpu/check_kernels.py)."""
    monkeypatch.setattr(regions, "COMPILER_BACKEND", "aot_eager")
    yield
    torch._dynamo.reset()


def model_of(kind: str, conv_kernel: int) -> Decoder:
    torch.manual_seed(3)
    cfg = DecoderConfig(
        vocab_size=61, hidden_size=24, num_layers=3, num_heads=6, num_kv_heads=2, head_dim=4, intermediate_size=40,
        max_position=128,
    )  # fmt: skip
    teacher = Decoder(cfg)
    for p in teacher.parameters():
        p.data.normal_(0, 0.3)
    if kind == "teacher":
        model = teacher
    else:
        model = convert_to_mamba(teacher, [] if kind == "linear" else [1], mamba={"conv_kernel": conv_kernel})
    model = model.double().eval()
    model.set_backends(ssd="torch")
    return model


@pytest.mark.parametrize("kind,conv_kernel,chunk", [("linear", 4, 7), ("hybrid", 2, 11), ("teacher", 4, 5)])
def test_compiled_prefill_matches_eager_in_float64(kind, conv_kernel, chunk):
    model = model_of(kind, conv_kernel)
    ids, mask = left_pad([[3, 4, 5, 6, 7] * 5, [9, 8] * 4, [1] * 17], 0)
    results = {}
    for mode in ("eager", "compile"):
        model.set_backends(prefill_mode=mode)
        cache = model.make_cache(3, 48)
        logits = prefill(model, model.embed(ids), mask, cache, chunk)
        token = logits.argmax(-1)
        step_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        after = model(token[:, None], attention_mask=step_mask, cache=cache).logits[:, -1]
        results[mode] = (logits, after, [getattr(c, "ssm", getattr(c, "k", None)).clone() for c in cache.layers])
    for a, b in zip(results["eager"][:2], results["compile"][:2]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    for a, b in zip(results["eager"][2], results["compile"][2]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_compiled_regions_run_compiled_and_training_stays_eager():
    model = model_of("linear", 4)
    model.set_backends(prefill_mode="compile")
    ids = torch.randint(0, 60, (2, 9))
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    with torch.no_grad():
        model(ids)
    assert counters["stats"]["unique_graphs"] >= 3  # the scan inputs, the gated output, the MLP block
    counters.clear()
    loss = model(ids).logits.sum()  # grad enabled: the eager layers, no graph
    loss.backward()
    assert counters["stats"]["unique_graphs"] == 0
    assert model.layers[0].mixer.conv_weight.grad is not None


def test_unknown_prefill_mode_is_refused():
    model = model_of("linear", 2)
    with pytest.raises(MmmambaError, match="prefill mode 'fast' is unknown"):
        model.set_backends(prefill_mode="fast")
