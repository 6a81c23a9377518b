"""The task suite: deterministic, disjoint splits, answers that check out, a strict loader, scoring."""

import hashlib
import json

import numpy as np
import pytest
import torch

from mmmamba.data.conversations import collate, encode_sample, read_jsonl
from mmmamba.data.images import ImageProcessor
from mmmamba.data.scenes import COLORS, SHAPE_MASKS, load_uci_digits
from mmmamba.data.suite import make_suite
from mmmamba.data.tokenizer import ByteTokenizer
from mmmamba.errors import MmmambaError
from mmmamba.evaluation.tasks import score
from mmmamba.models import VisionConfig

SIZES = {"train": 30, "val": 6, "test": 12}
FUYU32 = ImageProcessor(VisionConfig(image_size=32, patch_size=8))  # the task suite's images, as the teacher sees them


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    make_suite(out, seed=3, sizes=SIZES)
    return out


def folder_digest(folder):
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(suite, tmp_path):
    make_suite(tmp_path / "again", seed=3, sizes=SIZES)
    make_suite(tmp_path / "other", seed=4, sizes=SIZES)
    assert folder_digest(tmp_path / "again") == folder_digest(suite)
    assert folder_digest(tmp_path / "other") != folder_digest(suite)


def records(suite, split):
    return [json.loads(line) for line in (suite / f"{split}.jsonl").read_text().splitlines()]


def test_splits_share_no_sample_and_no_digit_image(suite):
    keys, digits = {}, {}
    for split in ("train", "val", "test"):
        rs = records(suite, split)
        assert len(rs) == SIZES[split] * 8
        keys[split] = {json.dumps([r["family"], r["scenes"], r["conversations"][0]["value"]]) for r in rs}
        digits[split] = {o["image"] for r in rs for sc in r["scenes"] for o in sc if o["kind"] == "digit"}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not keys[a] & keys[b]
        assert not digits[a] & digits[b]
    assert digits["test"]  # the check is not vacuous


def independent_answer(record, labels):
    """Recompute the answer from the scene description and the question, without the generator's code."""
    q = record["conversations"][0]["value"]
    objs = [o for sc in record["scenes"] for o in sc]
    shapes = [o for o in objs if o["kind"] == "shape"]
    fam = record["family"]
    if fam == "count":
        return str(len(shapes))
    if fam == "color":
        (o,) = [o for o in shapes if q.endswith(f"the {o['shape']}?")]
        return o["color"]
    if fam == "shape":
        (o,) = [o for o in shapes if f"the {o['color']} one" in q]
        return o["shape"]
    if fam == "position":
        (o,) = [o for o in shapes if f"the {o['color']} {o['shape']}?" in q]
        return f"row {o['row'] + 1} column {o['col'] + 1}"
    if fam == "digit":
        (o,) = [o for o in objs if o["kind"] == "digit"]
        return str(labels[o["image"]])
    if fam == "digit_sum":
        return str(sum(int(labels[o["image"]]) for o in objs if o["kind"] == "digit"))
    if fam == "reverse":
        return q.rsplit(" ", 1)[1][::-1]
    if fam == "recall":
        j = int(q.rsplit("image ", 1)[1].rstrip("?")) - 1
        o = record["scenes"][j][0]
        return f"{o['color']} {o['shape']}"
    raise AssertionError(fam)


def test_every_answer_checks_out_and_images_show_the_scene(suite):
    digit_images, labels = load_uci_digits()
    for split in ("train", "test"):
        for r in records(suite, split):
            assert r["conversations"][1]["value"] == independent_answer(r, labels), r["id"]
            paths = [r["image"]] if isinstance(r.get("image"), str) else r.get("image", [])
            assert len(paths) == len(r["scenes"])
            for path, scene in zip(paths, r["scenes"]):
                img = ((FUYU32(suite / path)[0] + 1) * 127.5).round().numpy().transpose(1, 2, 0)
                for o in scene:
                    cell = img[o["row"] * 8 : o["row"] * 8 + 8, o["col"] * 8 : o["col"] * 8 + 8]
                    if o["kind"] == "shape":
                        mean = cell[SHAPE_MASKS[o["shape"]]].mean(0)
                        assert np.abs(mean - COLORS[o["color"]]).max() <= 16
                        assert np.abs(cell[~SHAPE_MASKS[o["shape"]]] - 12).max() <= 1
                    else:
                        expect = digit_images[o["image"]].astype(np.int64) * 255 // 16
                        assert np.abs(cell[..., 0] - np.maximum(expect, 12)).max() <= 1


def test_tokenizer_round_trip_and_chat_mask(tmp_path):
    tok = ByteTokenizer(image_tokens=5)
    text = "Image 1: <image>\nWhat is 2+2? héllo ✓"
    ids = tok.encode(text)
    assert ids.count(tok.image_token_id) == 5
    assert tok.decode(ids) == text
    ids, mask = tok.chat([("<image>\nQ?", "A b"), ("again", "yes")])
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "A b<end>yes<end>"
    tok.save(tmp_path)
    assert ByteTokenizer.load(tmp_path).image_tokens == 5


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "not valid JSON"),
        ('{"conversations": [{"from": "human", "value": "hi"}]}', "human/gpt pairs"),
        ('{"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]}', "'human' then"),
        (
            '{"image": "a.png", "conversations": [{"from": "human", "value": "no mark"}, '
            '{"from": "gpt", "value": "x"}]}',
            "0 '<image>' marks but 1",
        ),
    ],
)
def test_loader_rejects_malformed_lines_with_file_and_line(tmp_path, line, message):
    good = '{"id": "ok", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}'
    f = tmp_path / "d.jsonl"
    f.write_text(good + "\n" + line + "\n")
    with pytest.raises(MmmambaError, match=f"d.jsonl:2: .*{message}"):
        read_jsonl(f)


def test_corrupt_image_is_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(MmmambaError, match="bad.png: cannot read image"):
        FUYU32(tmp_path / "bad.png")


def test_collate_pads_and_masks_answers(suite):
    tok = ByteTokenizer(image_tokens=16)
    samples = read_jsonl(suite / "test.jsonl")[:3] + read_jsonl(suite / "test.jsonl")[-2:]
    batch = collate([encode_sample(s, tok, FUYU32) for s in samples], tok.pad_id)
    n_images = sum(len(s.images) for s in samples)
    assert batch.pixel_values.shape == (n_images, 3, 32, 32)
    assert int((batch.input_ids == tok.image_token_id).sum()) == 16 * n_images
    for row, s in enumerate(samples):
        answer_ids = batch.input_ids[row][batch.loss_mask[row]].tolist()
        assert tok.decode(answer_ids) == s.turns[0][1] + "<end>"
        assert bool((batch.input_ids[row][batch.attention_mask[row] == 0] == tok.pad_id).all())


def test_score_perfect_and_wrong_predictions(suite):
    samples = read_jsonl(suite / "test.jsonl")
    perfect = {s.id: s.turns[0][1] for s in samples}
    report = score(samples, perfect)
    assert report["mean_accuracy"] == 1.0 and report["n"] == len(samples)
    assert set(report["per_family"]) == {
        "count",
        "color",
        "shape",
        "position",
        "digit",
        "digit_sum",
        "reverse",
        "recall",
    }
    wrong = {s.id: s.turns[0][1] + "x" for s in samples}
    assert score(samples, wrong)["mean_accuracy"] == 0.0
    half = {s.id: (s.turns[0][1] if s.family == "count" else "?") for s in samples}
    r = score(samples, half)
    assert r["per_family"]["count"] == 1.0 and r["per_family"]["color"] == 0.0
    assert r["mean_accuracy"] == pytest.approx(1 / 8)
    assert set(r["recall_by_images"]) == {"2", "3", "4"}


def test_shipped_teacher_answers_test_questions(suite):
    """The shipped checkpoint loads with its tokenizer and answers real questions (spot check, not the eval)."""
    from pathlib import Path

    import mmmamba
    from mmmamba.evaluation.tasks import predict

    folder = Path(__file__).parents[2] / "models" / "tiny-teacher"
    model = mmmamba.from_pretrained(folder)
    tok = ByteTokenizer.load(folder)
    samples = [s for s in read_jsonl(suite / "test.jsonl") if s.family in ("color", "shape", "reverse")]
    acc = score(samples, predict(model, tok, samples, progress=False))["mean_accuracy"]
    assert acc >= 0.9
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_teacher_training_writes_a_checkpoint_and_refuses_a_mismatched_resume(suite, tmp_path):
    import mmmamba
    from mmmamba.teacher.train import train_teacher

    train_teacher("tiny", suite, tmp_path, steps=2, eval_every=2, device="cpu")
    model = mmmamba.from_pretrained(tmp_path)
    assert ByteTokenizer.load(tmp_path).image_tokens == model.config.vision.num_patches == 16
    assert (tmp_path / "train_log.csv").read_text().splitlines()[1].startswith("2,")
    with pytest.raises(MmmambaError, match="holds a teacher run with other settings .steps differ"):
        train_teacher("tiny", suite, tmp_path, steps=3, eval_every=2, device="cpu")


def test_a_limited_split_spreads_over_every_family(suite):
    """A val subset (teacher tune, distill validation, eval --limit) must not be the first families only:
    a split is written family by family."""
    from mmmamba.data.conversations import read_split, spread

    full = read_split(suite, "val")
    families = {s.family for s in full}
    changes = sum(a.family != b.family for a, b in zip(full, full[1:]))
    assert changes == len(families) - 1  # stored grouped: the first N would be the first families only
    few = read_split(suite, "val", limit=len(families))
    assert {s.family for s in few} == families
    assert [s.id for s in few] == [s.id for s in full if s.id in {f.id for f in few}]  # file order kept
    assert read_split(suite, "val", limit=10**9) == full
    assert spread(list(range(10)), 4) == [0, 2, 5, 7]
    assert spread(list(range(3)), None) == [0, 1, 2]


def test_family_train_sizes_change_train_only(suite, tmp_path):
    """`data make --family-train reverse=N`: more distinct samples of one family in train; val and test
    are the same bytes as without it (train is drawn last), and every train sample is still unique."""
    out = tmp_path / "more"
    manifest = make_suite(out, seed=3, sizes=SIZES, family_train={"reverse": 75, "digit": 5})
    assert manifest["family_train"] == {"reverse": 75, "digit": 5}
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    per_family = {}
    for r in train:
        per_family[r["family"]] = per_family.get(r["family"], 0) + 1
    assert per_family == {f: {"reverse": 75, "digit": 5}.get(f, SIZES["train"]) for f in per_family}
    assert len({json.dumps([r["family"], r["scenes"], r["conversations"][0]["value"]]) for r in train}) == len(train)
    for split in ("val", "test"):
        assert (out / f"{split}.jsonl").read_bytes() == (suite / f"{split}.jsonl").read_bytes()
        assert folder_digest(out / "images" / split) == folder_digest(suite / "images" / split)
    with pytest.raises(ValueError, match="unknown families"):
        make_suite(tmp_path / "bad", seed=3, sizes=SIZES, family_train={"spelling": 3})


@pytest.mark.parametrize("item", ["reverse", "reverse=0", "spelling=10", "reverse=x", "reverse=2000000"])
def test_family_train_bad_input_is_one_line_exit_2(tmp_path, capsys, item):
    from mmmamba.cli.main import main

    assert main(["data", "make", "--out", str(tmp_path / "s"), "--family-train", item]) == 2
    err = capsys.readouterr().err.strip()
    assert "--family-train" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()
