"""Weighted pooling of data folders (``--data DIR:WEIGHT``)."""

import json
from collections import Counter

import pytest

from mmmamba.cli.main import main
from mmmamba.data.mixture import MixtureSampler, parse_source, parse_sources, shares
from mmmamba.errors import MmmambaError
from mmmamba.training.state import batch_indices


def test_parse_source(tmp_path):
    assert parse_source("runs/docs") == ("runs/docs", 1.0)
    assert parse_source("runs/docs:2.5") == ("runs/docs", 2.5)
    assert parse_sources(["a:3", "b"]) == (["a", "b"], [3.0, 1.0])
    odd = tmp_path / "x:2"  # a folder whose name holds a colon is a folder
    odd.mkdir()
    assert parse_source(str(odd)) == (str(odd), 1.0)
    for bad in ("a:0", "a:-1", "a:nan", "a:inf", "a:two"):
        with pytest.raises(MmmambaError, match="--data"):
            parse_source(bad)


def test_unit_weights_sample_as_the_plain_pool():
    s = MixtureSampler([7, 13], [1.0, 1.0], 4, seed=3)
    assert all(s.indices(k) == batch_indices(20, 4, 3, k) for k in range(12))


def test_weighted_batches_follow_the_shares_without_replacement_in_a_folder():
    sizes, weights, batch = [10, 30, 5], [3.0, 1.0, 0.5], 8
    s = MixtureSampler(sizes, weights, batch, seed=1)
    share = shares(sizes, weights)
    assert share == pytest.approx([30 / 62.5, 30 / 62.5, 2.5 / 62.5])
    folder = [0] * 10 + [1] * 30 + [2] * 5
    drawn = [[] for _ in sizes]
    for k in range(200):
        idx = s.indices(k)
        assert len(idx) == batch
        for i in idx:
            drawn[folder[i]].append(i)
        for f, n in enumerate(sizes):
            assert abs(len(drawn[f]) - (k + 1) * batch * share[f]) < 1 + 1e-9  # within one sample of the share
            seen = Counter(drawn[f])  # without replacement within a folder's epoch: counts differ by ≤ 1
            offset = sum(sizes[:f])
            assert set(seen) <= set(range(offset, offset + n))
            assert max(seen.values(), default=0) - min(seen[i] for i in range(offset, offset + n)) <= 1
    # a pure function of (seed, step): a fresh sampler (a resumed run) gives the same batches
    fresh = MixtureSampler(sizes, weights, batch, seed=1)
    assert fresh.indices(150) == s.indices(150) and fresh.indices(3) == MixtureSampler(sizes, weights, 8, 1).indices(3)


def _corpus(tmp_path, name, n):
    docs = tmp_path / f"docs_{name}"
    docs.mkdir()
    for i in range(n):
        body = " ".join(f"{name} {i} sentence {j} on sets, maps and queues." for j in range(12))
        (docs / f"d{i}.txt").write_text(body)
    out = tmp_path / f"corpus_{name}"
    args = ["--inputs", str(docs), "--out", str(out), "--tokenizer", "models/tiny-teacher", "--seq-len", "48"]
    assert main(["data", "text", *args, "--val-frac", "0.2", "--test-frac", "0.2"]) == 0
    return out


def test_distill_records_weights_and_keeps_unweighted_runs_as_before(tmp_path, capsys):
    a, b = _corpus(tmp_path, "a", 5), _corpus(tmp_path, "b", 10)
    student = tmp_path / "student"
    assert main(["convert", "--teacher", "models/tiny-teacher", "--keep-attention", "none", "--out", str(student)]) == 0
    common = ["distill", "--teacher", "models/tiny-teacher", "--student", str(student), "--batch-size", "2"]
    common += ["--stages", "1", "--steps-per-stage", "2", "--eval-every", "2"]
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "dry"), "--data", f"{a}:3", str(b), "--dry-run"]) == 0
    out = capsys.readouterr().out
    n_a, n_b = (len((c / "train.jsonl").read_text().splitlines()) for c in (a, b))
    expect = [3 * n_a / (3 * n_a + n_b), n_b / (3 * n_a + n_b)]
    assert f"batch shares of the --data folders: {expect[0]:.3f}, {expect[1]:.3f}" in out
    assert main([*common, "--out", str(tmp_path / "w"), "--data", f"{a}:3", str(b)]) == 0
    settings = json.loads((tmp_path / "w" / "distill_config.json").read_text())
    assert settings["data_weights"] == {str(a): 3.0, str(b): 1.0}
    assert main([*common, "--out", str(tmp_path / "w"), "--data", f"{a}:2", str(b)]) == 2  # other weights: refused
    assert "data_weights" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "u"), "--data", str(a), str(b)]) == 0
    assert "data_weights" not in json.loads((tmp_path / "u" / "distill_config.json").read_text())
    assert main([*common, "--out", str(tmp_path / "x"), "--data", f"{a}:0"]) == 2
    assert "weight 0" in capsys.readouterr().err
