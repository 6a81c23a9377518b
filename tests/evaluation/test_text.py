"""Held-out text scores (perplexity, KL to a teacher) and log-likelihood multiple choice, against
hand-computed references on a tiny float64 model."""

import json
import math

import pytest
import torch

from mmmamba.data.tokenizer import ByteTokenizer
from mmmamba.errors import MmmambaError
from mmmamba.evaluation.text import build_cloze, choice_scores, read_choices, text_scores
from mmmamba.models import Decoder
from tests.conftest import tiny_config


def model(seed: int) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(tiny_config(vocab_size=300)).double().eval()


def nll_by_hand(m: Decoder, ids: list[int]) -> tuple[float, int]:
    logp = torch.log_softmax(m(torch.tensor([ids])).logits[0].double(), -1)
    return -sum(logp[t, ids[t + 1]].item() for t in range(len(ids) - 1)), len(ids) - 1


def test_text_scores_match_a_hand_computation_whatever_the_batching():
    student, teacher = model(0), model(1)
    g = torch.Generator().manual_seed(0)
    windows = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (7, 19, 2, 12)]  # odd lengths
    total = sum(nll_by_hand(student, w)[0] for w in windows)
    count = sum(len(w) - 1 for w in windows)
    for batch in (1, 3, 4):  # right padding must not change any score
        got = text_scores(student, windows, batch, teacher, progress=False)
        assert got["tokens"] == count
        assert got["nll"] == pytest.approx(total / count, rel=1e-6)
        assert got["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-6)
        assert got["kl_teacher_model"] > 0
    # KL by hand on one window
    w = windows[1]
    with torch.no_grad():
        ls = torch.log_softmax(student(torch.tensor([w])).logits[0, :-1], -1)
        lt = torch.log_softmax(teacher(torch.tensor([w])).logits[0, :-1], -1)
    kl = (lt.exp() * (lt - ls)).sum(-1).mean().item()
    assert text_scores(student, [w], 1, teacher, progress=False)["kl_teacher_model"] == pytest.approx(kl, rel=1e-6)
    same = text_scores(student, windows, 2, student, progress=False)
    assert same["kl_teacher_model"] == pytest.approx(0, abs=1e-9)
    assert same["teacher_perplexity"] == pytest.approx(same["perplexity"])


def test_choice_scores_pick_the_highest_log_likelihood_continuation():
    m, tok = model(2), ByteTokenizer()
    context, choices = "The cat sat", ["on the mat.", "xq", "under a very long table"]
    sums = []
    for c in choices:
        ctx, cont = tok.encode_text(context), tok.encode_text(" " + c)
        logp = torch.log_softmax(m(torch.tensor([ctx + cont])).logits[0].double(), -1)
        sums.append(sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)))
    best = max(range(3), key=lambda j: sums[j])
    best_norm = max(range(3), key=lambda j: sums[j] / len(choices[j]))
    items = [{"context": context, "choices": choices, "label": label} for label in range(3)]
    got = choice_scores(m, tok, items, batch_size=2, progress=False)
    assert got["n"] == 3
    assert got["acc"] == pytest.approx(1 / 3)  # exactly one label is the argmax
    one = choice_scores(m, tok, [items[best]], progress=False)
    assert one["acc"] == 1.0 and choice_scores(m, tok, [items[best_norm]], progress=False)["acc_norm"] == 1.0


def test_read_choices_names_the_bad_line(tmp_path):
    f = tmp_path / "mc.jsonl"
    f.write_text(json.dumps({"context": "a", "choices": ["b", "c"], "label": 1}) + "\n" + '{"context": "a"}\n')
    with pytest.raises(MmmambaError, match=r"mc.jsonl:2"):
        read_choices(f)
    f.write_text(json.dumps({"context": "a", "choices": ["b", "c"], "label": 2}) + "\n")
    with pytest.raises(MmmambaError, match="label"):
        read_choices(f)


def test_cloze_items_are_well_formed_and_deterministic():
    docs = [
        "\n\n".join(
            f"Document {d} paragraph {p} opens here. It then says a second thing about topic {d}. "
            f"A third sentence follows for paragraph {p} of {d}. Finally it ends with sentence four of {d}."
            for p in range(3)
        )
        for d in range(6)
    ]
    items = build_cloze(docs, n_items=10, n_choices=4, seed=3)
    assert items == build_cloze(docs, n_items=10, n_choices=4, seed=3)
    assert 0 < len(items) <= 10
    for it in items:
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
        answer = it["choices"][it["label"]]
        doc = next(d for d in docs if it["context"].split(". ")[0] in d)
        assert answer in doc  # the right choice continues the paragraph's own document
        assert all(c not in doc for j, c in enumerate(it["choices"]) if j != it["label"])
