"""Scores on held-out real text, for models that read text (a pretrained LLM and its students).

- ``text_scores``: per-token negative log-likelihood and perplexity of the model, and with a
  teacher its perplexity and the per-token KL(teacher ‖ model), pooled over every predicted token
  of the held-out windows of a ``mmmamba data text`` corpus.
- ``choice_scores``: log-likelihood multiple choice in the lm-eval-harness manner: each choice's
  summed log-probability as a continuation of the context; ``acc`` takes the largest sum,
  ``acc_norm`` the largest sum per character of the choice.
- ``build_cloze``: a multiple-choice set made from held-out text, so that no labelled data is
  needed: the context is the first sentences of a paragraph, the right choice the sentence that
  follows, the wrong ones sentences of similar length from other documents.

The multiple-choice file format (one JSON object per line) is lm-eval's:
``{"context": str, "choices": [str, ...], "label": int}``.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.chat_tokenizer import ChatTokenizer
from ..data.text_corpus import read_text_split
from ..errors import MmmambaError
from ..io import iter_jsonl
from ..models import Decoder
from ..training.losses import masked_ce, masked_kl
from .tasks import check_same_vocabulary


def _padded(rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (b, L) and a mask of real tokens; right padding is safe for causal models."""
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    real = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        real[i, : len(r)] = True
    return ids.to(device), real.to(device)


def _log_probs(model: Decoder, ids: torch.Tensor) -> torch.Tensor:
    """(b, L−1, vocab) float32 log-probabilities of tokens 1..L−1."""
    return F.log_softmax(model(ids).logits[:, :-1].float(), dim=-1)


@torch.no_grad()
def text_scores(
    model: Decoder,
    windows: list[list[int]],
    batch_size: int = 8,
    teacher: Decoder | None = None,
    progress: bool = True,
) -> dict:
    """{tokens, nll, perplexity} (+ teacher_nll, teacher_perplexity, kl_teacher_model) over ``windows``.

    The per-token terms are the training losses' own (``masked_ce``, ``masked_kl``), summed."""
    device = next(model.parameters()).device
    model.eval()
    check_same_vocabulary(model, teacher, "KL")
    one = torch.ones((), device=device)  # the losses' denominator: 1 gives sums over the scored tokens
    nll = teacher_nll = kl = 0.0
    count = 0
    for start in tqdm(range(0, len(windows), batch_size), desc="text", disable=not progress, unit="batch"):
        ids, real = _padded(windows[start : start + batch_size], device)
        logits = model(ids).logits
        nll += masked_ce(logits, ids, real, one).item()
        count += int(real[:, 1:].sum())  # token t+1 is predicted at t
        if teacher is not None:
            t_logits = teacher(ids).logits
            teacher_nll += masked_ce(t_logits, ids, real, one).item()
            kl += masked_kl(t_logits[:, :-1], logits[:, :-1], real[:, 1:], total=one).item()
    if count == 0:
        raise MmmambaError("text evaluation: the windows hold no token to predict (each needs 2 or more)")
    out = {"tokens": count, "nll": nll / count, "perplexity": math.exp(nll / count)}
    if teacher is not None:
        out |= {
            "teacher_nll": teacher_nll / count,
            "teacher_perplexity": math.exp(teacher_nll / count),
            "kl_teacher_model": kl / count,
        }
    return out


def read_choices(path, tok: ChatTokenizer | None = None, max_tokens: int | None = None) -> list[dict]:
    """An lm-eval-style multiple-choice JSONL, each line checked (``file:line`` in the error). With ``tok``
    and ``max_tokens`` (the model's context), a context and choice that tokenise longer are refused too."""
    items = []
    for where, rec in iter_jsonl(path):
        ok = isinstance(rec, dict) and isinstance(rec.get("context"), str)
        choices = rec.get("choices") if ok else None
        ok = ok and isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)
        if not ok or type(rec.get("label")) is not int or not 0 <= rec["label"] < len(choices):
            raise MmmambaError(
                f'{where}: expected {{"context": str, "choices": [2 or more non-empty str], "label": index}}'
            )
        if tok is not None:
            context = tok.encode_text(rec["context"])
            if not context:
                raise MmmambaError(f"{where}: the context is empty after tokenisation; give it some text")
        if tok is not None and max_tokens is not None:
            longest = max(len(tok.encode_text(" " + c.strip())) for c in choices)
            if len(context) + longest > max_tokens:
                raise MmmambaError(
                    f"{where}: context and choice are {len(context) + longest} tokens, over the model's "
                    f"{max_tokens} (max_position); shorten the item or leave it out"
                )
        items.append(rec)
    if not items:
        raise MmmambaError(f"{path}: holds no multiple-choice items")
    return items


@torch.no_grad()
def choice_scores(
    model: Decoder, tok: ChatTokenizer, items: list[dict], batch_size: int = 16, progress: bool = True
) -> dict:
    """{n, acc, acc_norm}: log-likelihood multiple choice (see the module docstring)."""
    device = next(model.parameters()).device
    model.eval()
    pairs = []  # (context ids, continuation ids)
    for i, item in enumerate(items):
        context = tok.encode_text(item["context"])
        if not context:
            raise MmmambaError(f"multiple choice item {i + 1}: its context is empty after tokenisation")
        for choice in item["choices"]:
            cont = tok.encode_text(" " + choice.strip())
            pairs.append((context, cont))
    sums = []
    for start in tqdm(range(0, len(pairs), batch_size), desc="choices", disable=not progress, unit="batch"):
        chunk = pairs[start : start + batch_size]
        ids, _ = _padded([c + k for c, k in chunk], device)
        logp = _log_probs(model, ids)
        for row, (c, k) in enumerate(chunk):
            positions = torch.arange(len(c) - 1, len(c) + len(k) - 1, device=device)
            sums.append(logp[row, positions, torch.tensor(k, device=device)].sum().item())
    correct = correct_norm = 0
    offset = 0
    for item in items:
        n = len(item["choices"])
        scores = sums[offset : offset + n]
        chars = [len(c.strip()) for c in item["choices"]]
        offset += n
        correct += max(range(n), key=lambda j: scores[j]) == item["label"]
        correct_norm += max(range(n), key=lambda j: scores[j] / chars[j]) == item["label"]
    return {"n": len(items), "acc": correct / len(items), "acc_norm": correct_norm / len(items)}


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(" ".join(paragraph.split())) if s.strip()]


def build_cloze(texts: list[str], n_items: int = 200, n_choices: int = 4, seed: int = 0) -> list[dict]:
    """Multiple-choice items from held-out documents (see the module docstring); deterministic in ``seed``."""
    rng = random.Random(seed)
    candidates, pool = [], []  # pool: (document index, sentence)
    for d, text in enumerate(texts):
        for paragraph in re.split(r"\n\s*\n", text):
            sents = [s for s in _sentences(paragraph) if 20 <= len(s) <= 240]
            pool += [(d, s) for s in sents]
            if len(sents) >= 3:
                candidates.append((d, sents))
    rng.shuffle(candidates)
    items = []
    for d, sents in candidates:
        if len(items) == n_items:
            break
        cut = rng.randrange(2, len(sents))
        answer = sents[cut]
        similar = [s for e, s in pool if e != d and 0.67 <= len(s) / len(answer) <= 1.5 and s != answer]
        if len(set(similar)) < n_choices - 1:
            continue
        choices = rng.sample(sorted(set(similar)), n_choices - 1)
        label = rng.randrange(n_choices)
        choices.insert(label, answer)
        items.append({"context": " ".join(sents[:cut]), "choices": choices, "label": label})
    return items


def evaluate_text(
    model: Decoder,
    tok: ChatTokenizer,
    corpus_dir,
    split: str = "test",
    teacher: Decoder | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    cloze_items: int = 200,
    choices_file=None,
    progress: bool = True,
) -> dict:
    """The report on a ``mmmamba data text`` corpus split: ``text`` (perplexity, KL to the teacher) and
    ``choices`` (cloze made from the split, plus ``choices_file`` when given), teacher scores beside."""
    windows = read_text_split(corpus_dir, split, model.config.vocab_size)[:limit]
    texts = [rec.get("text", "") for _, rec in iter_jsonl(Path(corpus_dir) / f"{split}.jsonl") if isinstance(rec, dict)]
    sets = {"cloze": build_cloze(texts[:limit], cloze_items)}
    if choices_file is not None:  # read (and refused when malformed) before the long scoring
        sets[Path(choices_file).stem] = read_choices(choices_file)
    report = {
        "data": str(corpus_dir),
        "split": split,
        "text": text_scores(model, windows, batch_size, teacher, progress),
    }
    report["choices"] = {}
    for name, items in sets.items():
        if not items:
            continue
        row = {"model": choice_scores(model, tok, items, batch_size, progress)}
        if teacher is not None:
            row["teacher"] = choice_scores(teacher, tok, items, batch_size, progress)
        report["choices"][name] = row
    return report


def print_text_report(report: dict, title: str = "") -> None:
    if title:
        print(title)
    t = report["text"]
    line = f"  perplexity {t['perplexity']:.3f} over {t['tokens']} tokens"
    if "teacher_perplexity" in t:
        line += f"; teacher {t['teacher_perplexity']:.3f}; KL(teacher‖model) {t['kl_teacher_model']:.4f} nats/token"
    print(line)
    for name, row in report["choices"].items():
        m = row["model"]
        extra = f"; teacher acc {row['teacher']['acc']:.3f}" if "teacher" in row else ""
        print(f"  {name}: acc {m['acc']:.3f}, acc_norm {m['acc_norm']:.3f} (n = {m['n']}){extra}")
