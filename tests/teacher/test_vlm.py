"""The grafted VLM teacher (issue #15): an LLM + image tokens + a patch embedding, trained in two phases."""

import dataclasses
import json
import math

import pytest
import torch

from mmmamba.cli.main import main
from mmmamba.data.conversations import collate
from mmmamba.data.suite import make_suite
from mmmamba.data.text_corpus import build_text_corpus
from mmmamba.data.tokenizer import load_tokenizer
from mmmamba.errors import MmmambaError
from mmmamba.formats import load_checkpoint, save_checkpoint
from mmmamba.formats.gguf import write_tokenizer as write_hf_files
from mmmamba.models import Decoder
from mmmamba.teacher import vlm as vlm_teacher
from mmmamba.teacher.vlm import (
    GraftConfig,
    TuneConfig,
    graft_vision,
    load_tune_data,
    piece_loss,
    step_pieces,
    text_perplexity,
    tune_vlm_teacher,
)
from mmmamba.training.losses import masked_ce
from mmmamba.training.state import batch_indices
from tests.conftest import tiny_config
from tests.formats.hf_folders import SPECIALS, write_tokenizer

TEXT_ONLY_SPECIALS = [s for s in SPECIALS if s not in ("<img>", "</img>", "<IMG_CONTEXT>")]
DOC = (
    "Lists are ordered collections. A list can hold numbers, strings and other lists, and it can grow.\n\n"
    "Dictionaries map keys to values. Looking up a key is fast, and the keys must be hashable objects.\n\n"
    "A tuple is like a list that cannot change. Tuples are often used to return several values at once.\n\n"
)


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    """A text-only LLM folder: random tiny decoder, HF BPE tokenizer without image tokens, tied embeddings."""
    folder = tmp_path_factory.mktemp("llm")
    hf = write_tokenizer(folder / "tok", specials=TEXT_ONLY_SPECIALS)
    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=len(hf), vision=None, image_token_id=None, tie_embeddings=True, num_layers=2)
    save_checkpoint(Decoder(cfg), folder / "llm", extra=lambda f: write_hf_files(hf, f))
    return folder / "llm"


@pytest.fixture(scope="module")
def vlm_dir(llm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("vlm") / "vlm"
    graft_vision(llm_dir, out, GraftConfig())
    return out


@pytest.fixture(scope="module")
def suite_and_text(vlm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_suite(root / "suite", seed=3, sizes={"train": 6, "val": 1, "test": 2})
    docs = root / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"page{i}.txt").write_text(f"Page {i}.\n\n" + DOC * (i + 1), encoding="utf-8")
    tok = load_tokenizer(vlm_dir)
    build_text_corpus(
        [str(docs)],
        root / "text",
        tok,
        "bpe",
        64,
        0.2,
        0.2,
        min_tokens=8,
        min_chars=20,
        progress=False,
        near_duplicate=2.0,
    )
    return root / "suite", root / "text"


def test_graft_keeps_the_llm_and_adds_image_tokens(llm_dir, vlm_dir):
    llm, vlm = load_checkpoint(llm_dir).eval(), load_checkpoint(vlm_dir).eval()
    tok = load_tokenizer(vlm_dir)
    start, ctx, end = tok.image_span_ids()
    n = llm.config.vocab_size
    assert sorted((start, ctx, end)) == [n, n + 1, n + 2] and vlm.config.vocab_size == n + 3
    assert vlm.config.image_token_id == ctx and vlm.config.vision.style == "fuyu"
    emb_old, emb_new = llm.embed_tokens.weight, vlm.embed_tokens.weight
    assert torch.equal(emb_new[:n], emb_old)
    for i in (start, ctx, end):  # new rows start at the mean row
        torch.testing.assert_close(emb_new[i], emb_old.mean(0))
    ids = torch.tensor([tok.user_turn("what is in the picture?") + tok.answer("a red square")])
    with torch.no_grad():  # on text the VLM is the LLM: same logits over the LLM's vocabulary
        torch.testing.assert_close(vlm(ids).logits[..., :n], llm(ids).logits, rtol=0, atol=0)
    # the tokenizer saved with it expands an image into its placeholders
    assert tok.encode("<image>", [4]) == [start, ctx, ctx, ctx, ctx, end]


def test_graft_refuses_a_vlm_and_a_student(vlm_dir, tmp_path, capsys):
    assert main(["teacher", "graft", "--llm", str(vlm_dir), "--out", str(tmp_path / "again")]) == 2
    assert "already has an image front-end" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()
    assert main(["teacher", "graft", "--llm", str(vlm_dir), "--out", str(vlm_dir / "inside")]) == 2


def test_phase_loss_is_the_weighted_mean_of_suite_and_text(vlm_dir, suite_and_text):
    suite, text = suite_and_text
    model = load_checkpoint(vlm_dir).double().eval()
    tok = load_tokenizer(vlm_dir)
    cfg = TuneConfig(batch_size=3, text_batch_size=2, text_weight=0.25, seed=5)
    data = load_tune_data(suite, [text], tok, model, cfg)
    assert data.text_train and all(all(e.loss_mask) for e in data.text_train)  # windows: every token a target
    embed, everything = cfg.phases()

    def mean_ce(examples):
        b = collate(examples, tok.pad_id)
        pixels = None if b.pixel_values is None else b.pixel_values.double()
        return masked_ce(model(b.input_ids, pixels).logits, b.input_ids, b.loss_mask)

    with torch.no_grad():
        for step in (0, 7):
            s = [data.suite_train[i] for i in batch_indices(len(data.suite_train), 3, 5, step)]
            t = [data.text_train[i] for i in batch_indices(len(data.text_train), 2, 6, step)]
            got = sum(piece_loss(model, p) for p in step_pieces(data, everything, cfg, step, tok.pad_id))
            torch.testing.assert_close(got, 0.75 * mean_ce(s) + 0.25 * mean_ce(t), rtol=1e-12, atol=0)
            alone = step_pieces(data, embed, cfg, step, tok.pad_id)  # phase 1: the task suite only
            assert len(alone) == 1 and alone[0].batch.pixel_values is not None
            torch.testing.assert_close(piece_loss(model, alone[0]), mean_ce(s), rtol=1e-12, atol=0)
        # the perplexity helper is exp of the mean loss over the targets
        ppl = text_perplexity(model, data.text_val, "cpu")
        assert ppl == pytest.approx(math.exp(float(mean_ce(data.text_val))), rel=1e-5)  # float32 sums


def test_packed_step_has_the_padded_steps_loss_and_gradients(vlm_dir, suite_and_text):
    """`tune --pack`: the step's suite and text samples in one packed row (one forward), each target
    weighted by its part's share over the part's target count: the same loss and gradients, float64."""
    suite, text = suite_and_text
    model = load_checkpoint(vlm_dir).double().train()
    tok = load_tokenizer(vlm_dir)
    padded = TuneConfig(batch_size=3, text_batch_size=2, text_weight=0.25, seed=5)
    packed = dataclasses.replace(padded, pack=True)
    data = load_tune_data(suite, [text], tok, model, padded)
    params = [p for p in model.parameters()]

    def loss_and_grads(pieces):
        model.zero_grad()
        loss = sum(piece_loss(model, p) for p in pieces)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params if p.grad is not None]

    for phase in padded.phases():
        for step in (0, 7):
            one = step_pieces(data, phase, packed, step, tok.pad_id)
            assert len(one) == 1 and one[0].batch.input_ids.shape[0] == 1 and one[0].batch.cu_seqlens is not None
            a, ga = loss_and_grads(step_pieces(data, phase, padded, step, tok.pad_id))
            b, gb = loss_and_grads(one)
            torch.testing.assert_close(b, a, rtol=1e-11, atol=0)
            assert len(ga) == len(gb)
            for x, y in zip(gb, ga):
                torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-13)


def test_tune_trains_the_embedding_first_then_everything_and_resumes(vlm_dir, suite_and_text, tmp_path, monkeypatch):
    suite, text = suite_and_text
    out = tmp_path / "teacher"
    cfg = TuneConfig(embed_steps=2, all_steps=2, batch_size=3, text_batch_size=2, eval_every=1, val_limit=4)
    report = tune_vlm_teacher(vlm_dir, suite, [text], out, cfg)
    start = load_checkpoint(vlm_dir).state_dict()
    after_embed = load_checkpoint(out / "after_embed").state_dict()
    final = load_checkpoint(out).state_dict()
    vision = {k for k in start if k.startswith("vision.")}
    assert vision and all(not torch.equal(start[k], after_embed[k]) for k in vision)
    assert all(torch.equal(start[k], after_embed[k]) for k in start if k not in vision)  # the LLM frozen
    assert not torch.equal(start["layers.0.mlp.up_proj.weight"], final["layers.0.mlp.up_proj.weight"])
    # the report: test accuracy per family, text perplexity before (the LLM's own) and after
    llm_ppl = text_perplexity(
        load_checkpoint(vlm_dir).float(),
        load_tune_data(suite, [text], load_tokenizer(vlm_dir), load_checkpoint(vlm_dir), cfg).text_test,
        "cpu",
    )
    assert report["text_test_ppl_before"] == pytest.approx(llm_ppl, rel=1e-6)
    assert set(report["suite_test"]["per_family"]) and 0 <= report["suite_test"]["mean_accuracy"] <= 1
    assert json.loads((out / "teacher_report.json").read_text())["phases"][0]["trainable"] == "vision"
    rows = (out / "tune_log.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [["embed", "1"], ["embed", "2"], ["all", "1"], ["all", "2"]]
    families = [json.loads(line) for line in (out / "tune_val_families.jsonl").read_text().splitlines()]
    assert [[f["phase"], str(f["step"])] for f in families] == [r.split(",")[:2] for r in rows[1:]]
    for f, r in zip(families, rows[1:]):  # the val mean in the CSV is the mean of these per-family accuracies
        mean = sum(f["per_family"].values()) / len(f["per_family"])
        assert float(r.split(",")[4]) == pytest.approx(mean, abs=1e-4)
    # a second run finds both phases done: no step is taken, the weights stay
    again = tune_vlm_teacher(vlm_dir, suite, [text], out, cfg)
    assert again["suite_test"] == report["suite_test"]
    assert (out / "tune_log.csv").read_text().splitlines() == rows
    assert len((out / "tune_val_families.jsonl").read_text().splitlines()) == len(families)
    assert all(torch.equal(final[k], v) for k, v in load_checkpoint(out).state_dict().items())
    # --pack changes how a step is computed, not what: it is not a setting a rerun must repeat
    assert (
        tune_vlm_teacher(vlm_dir, suite, [text], out, dataclasses.replace(cfg, pack=True))["suite_test"]
        == (report["suite_test"])
    )
    # other settings on the same folder: one line naming them, nothing changed
    other = dataclasses.replace(cfg, all_steps=3, text_weight=0.5)
    with pytest.raises(MmmambaError, match="all_steps, text_weight differ"):
        tune_vlm_teacher(vlm_dir, suite, [text], out, other)
    assert (out / "tune_log.csv").read_text().splitlines() == rows
    # both answers come before the data are read and encoded (the long part of a start)
    monkeypatch.setattr(vlm_teacher, "load_tune_data", lambda *a: pytest.fail("data read for a finished run"))
    assert tune_vlm_teacher(vlm_dir, suite, [text], out, cfg)["suite_test"] == report["suite_test"]
    with pytest.raises(MmmambaError, match="differ"):
        tune_vlm_teacher(vlm_dir, suite, [text], out, other)


def test_tune_cli_packed_run_trains_and_reports(vlm_dir, suite_and_text, tmp_path):
    suite, text = suite_and_text
    out = tmp_path / "packed"
    argv = ["teacher", "tune", "--init", str(vlm_dir), "--data", str(suite), "--text", str(text), "--out", str(out),
            "--embed-steps", "1", "--steps", "2", "--batch-size", "3", "--text-batch-size", "2", "--pack",
            "--device", "cpu"]  # fmt: skip
    assert main(argv) in (0, None)
    assert "pack" not in json.loads((out / "tune_config.json").read_text())
    rows = (out / "tune_log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:2] for r in rows] == [["embed", "1"], ["all", "2"]]
    assert all(math.isfinite(float(r.split(",")[3])) for r in rows)
    start, final = load_checkpoint(vlm_dir).state_dict(), load_checkpoint(out).state_dict()
    assert not torch.equal(start["layers.0.mlp.up_proj.weight"], final["layers.0.mlp.up_proj.weight"])


def test_tune_refuses_a_text_only_model_before_any_work(llm_dir, suite_and_text, tmp_path, capsys):
    suite, _ = suite_and_text
    code = main(
        [
            "teacher",
            "tune",
            "--init",
            str(llm_dir),
            "--data",
            str(suite),
            "--out",
            str(tmp_path / "t"),
            "--device",
            "cpu",
        ]
    )
    assert code == 2 and "has no image front-end" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_graft_from_a_gguf_file_with_an_internvl_front_end(tmp_path):
    pytest.importorskip("gguf")
    from tests.formats.gguf_files import hf_llama, write_gguf

    write_gguf(tmp_path / "t.gguf", hf_llama())
    args = [
        "teacher",
        "graft",
        "--llm",
        str(tmp_path / "t.gguf"),
        "--out",
        str(tmp_path / "vlm"),
        "--vision",
        "internvl",
    ]
    assert main([*args, "--image-size", "32", "--patch-size", "4", "--downsample-ratio", "0.5"]) == 0
    llm, vlm = load_checkpoint(tmp_path / "t.gguf").float().eval(), load_checkpoint(tmp_path / "vlm").eval()
    assert vlm.config.vision.style == "internvl" and vlm.config.vision.tokens_per_tile == 16  # 8×8 patches, 2×2 merged
    tok = load_tokenizer(tmp_path / "vlm")
    ids = torch.tensor([tok.user_turn("hello there")])
    with torch.no_grad():
        torch.testing.assert_close(vlm(ids).logits[..., : llm.config.vocab_size], llm(ids).logits)
        pixels = torch.randn(1, 3, 32, 32)
        with_image = torch.tensor([tok.user_turn("<image>\nwhat is in the picture?", image_tokens=[16])])
        assert vlm(with_image, pixels).logits.isfinite().all()


def test_tune_refuses_bad_inputs_with_one_line_before_any_work(vlm_dir, suite_and_text, tmp_path, capsys):
    suite, _ = suite_and_text
    base = ["teacher", "tune", "--init", str(vlm_dir), "--data", str(suite), "--device", "cpu"]
    assert main([*base, "--text", str(tmp_path / "missing"), "--out", str(tmp_path / "a")]) == 2
    assert f"--text {tmp_path / 'missing'}:" in capsys.readouterr().err  # named as the flag it came from
    (tmp_path / "empty").mkdir()
    assert main([*base, "--text", str(tmp_path / "empty"), "--out", str(tmp_path / "a")]) == 2
    assert "--text" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main([*base, "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main([*base, "--out", str(suite)]) == 2  # would replace the data
    assert "is or contains --data" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "--batch-size", "100000"]) == 2
    assert "fewer than --batch-size" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("a", "b"))
