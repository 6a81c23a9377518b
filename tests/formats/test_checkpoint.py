import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import mmmamba
from mmmamba.convert import convert_to_mamba
from mmmamba.formats import save_checkpoint
from mmmamba.models import Decoder
from tests.conftest import tiny_config


def assert_bit_exact(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("tie", [False, True])
def test_save_load_round_trip_is_bit_exact(tmp_path, teacher, tie):
    torch.manual_seed(0)
    model = convert_to_mamba(Decoder(tiny_config(tie_embeddings=tie)), [1])
    save_checkpoint(model, tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    loaded = mmmamba.from_pretrained(tmp_path)
    assert loaded.config == model.config
    assert_bit_exact(model, loaded)
    if tie:
        assert loaded.lm_head.weight.data_ptr() == loaded.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, 59, (1, 7))
    torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits, rtol=0, atol=0)


def test_sharded_round_trip(tmp_path, teacher):
    save_checkpoint(teacher, tmp_path, max_shard_bytes=20_000)
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    assert_bit_exact(teacher, mmmamba.from_pretrained(tmp_path))


def test_a_tensor_in_two_shards_is_refused(tmp_path, teacher):
    """Whichever copy the index names, a second one in another shard is ambiguous: refused, never last-wins."""
    save_checkpoint(teacher, tmp_path, max_shard_bytes=20_000)
    first, second = sorted(tmp_path.glob("model-*.safetensors"))[:2]
    tensors = load_file(second)
    name = next(iter(load_file(first)))
    tensors[name] = torch.zeros_like(load_file(first)[name])
    save_file(tensors, second)
    (tmp_path / "manifest.json").unlink()  # shards changed on purpose
    with pytest.raises(mmmamba.MmmambaError, match=f"tensor '{name}' is also in {first.name}"):
        mmmamba.from_pretrained(tmp_path)


def test_missing_tensor_is_named(tmp_path, teacher):
    save_checkpoint(teacher, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["layers.2.mixer.k_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "manifest.json").unlink()  # weights replaced on purpose (else their size is refused first)
    with pytest.raises(mmmamba.MmmambaError, match=r"layers\.2\.mixer\.k_proj\.weight.*missing"):
        mmmamba.from_pretrained(tmp_path)


def test_wrong_shape_is_named(tmp_path, teacher):
    save_checkpoint(teacher, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["norm.weight"] = torch.ones(3, dtype=torch.float64)
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(mmmamba.MmmambaError, match=r"'norm\.weight' has shape \(3,\)"):
        mmmamba.from_pretrained(tmp_path)


def test_truncated_weights_and_bad_config_give_one_line_errors(tmp_path, teacher):
    save_checkpoint(teacher, tmp_path)
    f = tmp_path / "model.safetensors"
    whole = f.read_bytes()
    f.write_bytes(whole[:1000])
    with pytest.raises(mmmamba.MmmambaError, match="model.safetensors: 1000 bytes where .* were written") as e:
        mmmamba.from_pretrained(tmp_path)
    assert "\n" not in str(e.value) and "re-copy" in str(e.value)
    f.write_bytes(whole + b"\0" * 8)  # a longer file: no longer the bytes that were written
    with pytest.raises(mmmamba.MmmambaError, match="incomplete or was changed"):
        mmmamba.from_pretrained(tmp_path)
    (tmp_path / "manifest.json").unlink()  # without the manifest, the reader's own check speaks
    f.write_bytes(whole[:1000])
    with pytest.raises(mmmamba.MmmambaError, match="model.safetensors: unreadable"):
        mmmamba.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(mmmamba.MmmambaError, match="config.json: not valid JSON"):
        mmmamba.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "mmmamba", "vocab_size": 3}))
    with pytest.raises(mmmamba.MmmambaError, match="incomplete"):
        mmmamba.from_pretrained(tmp_path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load_naming_the_tensor(tmp_path, teacher, bad):
    save_checkpoint(teacher, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["layers.1.input_norm.weight"][3] = bad  # one value, same file size: the manifest cannot tell
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(mmmamba.MmmambaError, match=r"'layers\.1\.input_norm\.weight' holds NaN or Inf"):
        mmmamba.from_pretrained(tmp_path)


def test_a_new_checkpoint_never_replaces_a_folder_another_writer_filled_meanwhile(tmp_path, teacher):
    save_checkpoint(teacher, tmp_path / "new", replace=False)  # nothing there: written
    (tmp_path / "empty").mkdir()
    save_checkpoint(teacher, tmp_path / "empty", replace=False)  # an empty folder: no loss, written
    assert (tmp_path / "empty" / "config.json").is_file()
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "config.json").write_text("theirs")  # as if another process published first
    with pytest.raises(mmmamba.MmmambaError, match="another process wrote this folder"):
        save_checkpoint(teacher, tmp_path / "theirs", replace=False)
    assert [p.name for p in (tmp_path / "theirs").iterdir()] == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new", "theirs"]  # no temporary left
