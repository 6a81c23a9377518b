"""Teacher-written text: exact top-p sampling, the same tokens as a plain reference loop, no held-out
prefix, determinism and resume, and the text-corpus format."""

import json
import random

import pytest
import torch

from mmmamba.cli.main import main
from mmmamba.data.text_corpus import is_text_corpus, read_text_split, text_examples
from mmmamba.data.tokenizer import load_tokenizer
from mmmamba.formats import load_checkpoint
from mmmamba.infer import teacher_text as tt
from mmmamba.infer.sampling import (
    nucleus_sample,
    nucleus_sample_reference,
    nucleus_sample_unsorted,
    nucleus_sample_unsorted_reference,
    nucleus_threshold,
)

TEACHER = "models/tiny-teacher"


@pytest.mark.parametrize("candidates", [1, 7, 1000])
@pytest.mark.parametrize("temperature,top_p", [(1.0, 0.9), (0.7, 0.5), (1.3, 1.0), (1.0, 1e-3)])
def test_nucleus_sample_equals_float64_reference(candidates, temperature, top_p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 97, generator=g) * torch.linspace(0.5, 6, 40)[:, None]  # flat to peaked rows
    u = torch.rand(40, generator=g, dtype=torch.float64)
    got = nucleus_sample(logits, temperature, top_p, u, candidates)
    assert got.tolist() == nucleus_sample_reference(logits, temperature, top_p, u).tolist()


@pytest.mark.parametrize(
    "sample,logits",
    [
        # 2 candidates: the sorted sampler's pre-sort overflows and the row is sorted in full
        (lambda x, u: nucleus_sample(x, 1.0, 0.8, u, candidates=2), [2.0, 1.0, 0.5, 0.0, -1.0, -3.0]),
        # vocabulary order unlike probability order: the unsorted sampler walks the former
        (lambda x, u: nucleus_sample_unsorted(x, 1.0, 0.8, u), [-1.0, 2.0, 0.0, 0.5, -3.0, 1.0]),
    ],
    ids=["sorted", "unsorted"],
)
def test_samplers_draw_the_renormalised_nucleus(sample, logits):
    """Float32, the fast paths' dtype: over an even grid of uniforms each token's share is its probability
    within the nucleus, for both samplers."""
    logits = torch.tensor(logits)
    p = logits.double().softmax(-1)
    ps, order = p.sort(descending=True)
    keep = (ps.cumsum(0) - ps) < 0.8
    expect = torch.zeros_like(p)
    expect[order[keep]] = ps[keep] / ps[keep].sum()
    n = 20000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    tokens = sample(logits.expand(n, -1), u)
    share = torch.bincount(tokens, minlength=6).double() / n
    assert torch.allclose(share, expect, atol=2 / n)


@pytest.mark.parametrize("rows,vocab", [(40, 97), (7, 1), (13, 3), (5, 2049)])
@pytest.mark.parametrize("temperature,top_p", [(1.0, 0.9), (0.7, 0.5), (1.3, 1.0), (1.0, 1e-3), (0.05, 0.95)])
def test_unsorted_nucleus_sample_equals_float64_reference(rows, vocab, temperature, top_p):
    g = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(rows, vocab, generator=g) * torch.linspace(0.5, 6, rows)[:, None]).double()
    u = torch.rand(rows, generator=g, dtype=torch.float64)
    got = nucleus_sample_unsorted(logits, temperature, top_p, u)
    assert got.tolist() == nucleus_sample_unsorted_reference(logits, temperature, top_p, u).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nucleus_threshold_is_the_sorted_nucleus_smallest_probability(dtype):
    """The bisection over bit patterns lands exactly on the smallest probability of the sorted nucleus."""
    g = torch.Generator().manual_seed(1)
    probs = (torch.randn(64, 501, generator=g) * torch.linspace(0.3, 8, 64)[:, None]).softmax(-1).to(dtype)
    for top_p in (0.3, 0.9, 0.99):
        ps = probs.sort(-1, descending=True).values
        size = ((ps.cumsum(-1) - ps) < top_p).sum(-1, keepdim=True)
        smallest = ps.gather(-1, size - 1)
        near = ((ps.cumsum(-1) - top_p).abs() < 1e-5).any(-1, keepdim=True)  # float32 sums may round either way
        assert torch.equal(torch.where(near, smallest, nucleus_threshold(probs, top_p)), smallest)


def _docs(folder, n=10, words=120):
    folder.mkdir()
    rng = random.Random(5)
    for i in range(n):
        text = " ".join("".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 7))) for _ in range(words))
        (folder / f"d{i}.txt").write_text(f"Document {i}. {text}\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tt")
    _docs(root / "docs")
    out = root / "corpus"
    args = ["--inputs", str(root / "docs"), "--out", str(out), "--tokenizer", TEACHER, "--seq-len", "96"]
    assert main(["data", "text", *args, "--val-frac", "0.2", "--test-frac", "0.2"]) == 0
    (root / "prompts.txt").write_text("name a colour\nwhat is two plus two\ncount to five\n")
    return out


def _run(out, corpus, *more):
    args = ["data", "teacher-text", "--teacher", TEACHER, "--prefixes", str(corpus), "--out", str(out), "--device"]
    return main([*args, "cpu", "--text-rows", "7", "--prefix-tokens", "12", "--new-tokens", "20", *more])


def _records(out):
    return {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()] for s in tt.SPLITS}


@pytest.mark.parametrize(
    "sampler,reference", [("sorted", nucleus_sample_reference), ("unsorted", nucleus_sample_unsorted_reference)]
)
def test_tokens_equal_a_plain_reference_sampler(corpus, sampler, reference):
    """Batched static decode + the fast sampler give exactly the tokens of a loop that runs the whole
    sequence through the model for every token, one row at a time, and samples in float64."""
    model = load_checkpoint(TEACHER).double().eval()
    tok = load_tokenizer(TEACHER)
    cfg = tt.TeacherTextConfig(prefix_tokens=12, new_tokens=20, text_rows=5, batch_size=3, seed=3, candidates=5,
                               sampler=sampler)  # fmt: skip
    rows = tt.plan_rows(corpus, corpus.parent / "prompts.txt", tok, cfg, model.config.vocab_size)
    out = corpus.parent / f"ref_{sampler}"
    tt.write_teacher_text(model, tok, rows, out, cfg, {"teacher": TEACHER}, progress=False)
    got = {r["row"]: r["input_ids"] for recs in _records(out).values() for r in recs}
    stops = set(tok.stop_ids) | {tok.end_id}
    expected = {}
    for k, idx in enumerate(tt.batches_of(rows, cfg.batch_size)):
        g = torch.Generator().manual_seed(tt.batch_seed(cfg.seed, k))
        seqs = {i: list(rows[i].prefix) for i in idx}
        live = set(idx)
        for _ in range(cfg.new_tokens):
            u = torch.rand(cfg.batch_size, generator=g, dtype=torch.float64)
            for j, i in enumerate(idx):
                if i in live:
                    logits = model(torch.tensor([seqs[i]])).logits[:, -1]
                    t = int(reference(logits, cfg.temperature, cfg.top_p, u[j : j + 1])[0])
                    seqs[i].append(t)
                    if t in stops:
                        live.discard(i)
        expected |= {i: s for i, s in seqs.items() if len(s) > len(rows[i].prefix) + (s[-1] in stops)}
    assert len(rows) == 8 and got == expected


def test_no_held_out_document_serves_as_prefix(corpus, tmp_path):
    assert _run(tmp_path / "o", corpus, "--text-rows", "40") == 0
    windows = {s: [json.loads(x)["input_ids"] for x in (corpus / f"{s}.jsonl").read_text().splitlines()]
               for s in tt.SPLITS}  # fmt: skip

    def inside(prefix, wins):
        n = len(prefix)
        return any(w[i : i + n] == prefix for w in wins for i in range(len(w) - n + 1))

    records = [r for recs in _records(tmp_path / "o").values() for r in recs]
    assert len(records) == 40
    for r in records:
        prefix = r["input_ids"][: r["prefix_tokens"]]
        assert r["source"].startswith(str(corpus / "train.jsonl"))
        assert inside(prefix, windows["train"])
        assert not inside(prefix, windows["val"]) and not inside(prefix, windows["test"])


def test_deterministic_resumable_and_read_as_a_text_corpus(corpus, tmp_path, monkeypatch, capsys):
    assert _run(tmp_path / "a", corpus, "--batch-size", "3", "--seed", "4") == 0
    assert _run(tmp_path / "b", corpus, "--batch-size", "3", "--seed", "5") == 0
    first = _records(tmp_path / "a")
    assert first != _records(tmp_path / "b")  # another seed, other text
    # interrupted after the first batch, then run again: the same files as the uninterrupted run
    real = tt.Writer.write
    calls = []

    def flaky(self, prefixes, seed):
        calls.append(seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, prefixes, seed)

    monkeypatch.setattr(tt.Writer, "write", flaky)
    assert _run(tmp_path / "c", corpus, "--batch-size", "3", "--seed", "4") == 130  # the CLI's Ctrl-C exit
    assert len(list((tmp_path / "c" / "parts").iterdir())) == 1 and not (tmp_path / "c" / "corpus.json").exists()
    monkeypatch.setattr(tt.Writer, "write", real)
    assert _run(tmp_path / "c", corpus, "--batch-size", "3", "--seed", "4") == 0
    assert _records(tmp_path / "c") == first and not (tmp_path / "c" / "parts").exists()
    # a damaged finished batch is said once and written again, to the same text
    for n, damage in enumerate(('{"x": 1}\n', "", '{"row": 0, "new": [99999, -1]}\n')):
        folder = tmp_path / f"d{n}"
        monkeypatch.setattr(tt.Writer, "write", flaky)
        calls.clear()
        assert _run(folder, corpus, "--batch-size", "3", "--seed", "4") == 130
        monkeypatch.setattr(tt.Writer, "write", real)
        (part,) = (folder / "parts").iterdir()
        part.write_text(damage)
        capsys.readouterr()
        assert _run(folder, corpus, "--batch-size", "3", "--seed", "4") == 0
        assert "damaged finished batch" in capsys.readouterr().err
        assert _records(folder) == first
    # a corpus no teacher-text run wrote is not taken for an unfinished run of its own
    assert _run(tmp_path / "e", corpus, "--batch-size", "3", "--seed", "4") == 0
    (tmp_path / "e" / tt.PLAN_FILE).unlink()
    before = (tmp_path / "e" / "train.jsonl").read_bytes()
    capsys.readouterr()
    assert _run(tmp_path / "e", corpus, "--batch-size", "3", "--seed", "5") == 2
    assert "no teacher-text run wrote" in capsys.readouterr().err
    assert (tmp_path / "e" / "train.jsonl").read_bytes() == before
    # other settings into the same folder: refused in one line
    capsys.readouterr()
    assert _run(tmp_path / "c", corpus, "--batch-size", "3", "--seed", "9") == 2
    assert "other settings" in capsys.readouterr().err
    # the corpus format: read back, recorded settings, usable as distillation examples
    out = tmp_path / "a"
    info = json.loads((out / "corpus.json").read_text())
    assert is_text_corpus(out) and info["format"] == "mmmamba-text-corpus"
    t = info["teacher_text"]
    assert t["prefixes"] == str(corpus) and t["prefix_split"] == "train" and t["seed"] == 4
    assert t["sampling"] == {"temperature": 1.0, "top_p": 0.95, "candidates": 1024, "sampler": "sorted"}
    tok = load_tokenizer(TEACHER)
    for s in tt.SPLITS:
        assert read_text_split(out, s) == [r["input_ids"] for r in first[s]] if first[s] else True
        assert all(tok.decode(r["input_ids"]) == r["text"] for r in first[s])
        assert info["splits"][s]["chunks"] == len(first[s])
    assert len(text_examples(out, "train", 264, 2048)) == len(first["train"])


def test_bad_inputs_are_one_line_errors(corpus, tmp_path, capsys):
    base = ["data", "teacher-text", "--teacher", TEACHER, "--out", str(tmp_path / "o"), "--device", "cpu"]
    for extra, says in (
        ([], "give --prefixes"),
        (["--prefixes", str(tmp_path)], "no corpus.json"),
        (["--prefixes", str(corpus), "--prefix-tokens", "500"], "lower --prefix-tokens"),
        (["--prefixes", str(corpus), "--new-tokens", "4000"], "max_position"),
        (["--prompts", str(tmp_path)], "without train.jsonl"),
    ):
        capsys.readouterr()
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_plans_written_before_the_sampler_setting_still_resume():
    """A plan records ``sampler`` only when it is not the sorted one, the only sampler older plans knew."""
    assert "sampler" not in tt.TeacherTextConfig().settings()
    assert tt.TeacherTextConfig(sampler="unsorted").settings()["sampler"] == "unsorted"
    with pytest.raises(tt.MmmambaError, match="--sampler sort: use one of sorted, unsorted"):
        tt.TeacherTextConfig(sampler="sort").check()
