"""Metrics for models that answer in free text (a chat teacher and its students).

- Against a reference answer: exact match, normalized exact match and token-level F1 (SQuAD's
  normalisation: lower case, no punctuation, no articles a/an/the, single spaces).
- Against the teacher's greedy answer to the same prompt (``agreement``): the rate of answers that
  match the teacher's in full, and first-N-token agreement — over the first N positions of the
  teacher's answer (stop token included), the share where the student produced the same token at
  the same position (pooled over prompts), plus the mean common-prefix length / N. A log-likelihood
  score can hide a large generation gap; these are measured on what the model actually writes.
- ``looping``: the share of answers that repeat themselves, i.e. hold some n-gram of tokens (n = 8) twice,
  for the model and, with a teacher, for the teacher on the same prompts.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD's answer normalisation."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the normalised words of ``prediction`` against ``reference`` (1.0 when both are empty)."""
    p, r = normalize(prediction).split(), normalize(reference).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def reference_scores(predictions: dict[str, str], references: dict[str, str]) -> dict:
    """Exact, normalized-exact and token-F1 means over the references (a missing prediction scores 0)."""
    n = max(1, len(references))
    exact = sum(predictions.get(k, "").strip() == v.strip() for k, v in references.items())
    norm = sum(normalize(predictions.get(k, "")) == normalize(v) for k, v in references.items())
    f1 = sum(token_f1(predictions.get(k, ""), v) for k, v in references.items())
    return {"exact_match": exact / n, "normalized_exact_match": norm / n, "token_f1": f1 / n, "n": len(references)}


def agreement(student: dict[str, list[int]], teacher: dict[str, list[int]], first_n: int = 16) -> dict:
    """Greedy agreement of ``student`` with ``teacher`` answer tokens (by sample id).

    ``full_answer_match``: share of prompts whose answer tokens equal the teacher's exactly.
    ``first_n_token_agreement``: over the first ``first_n`` positions of each teacher answer, the
    share of positions where the student wrote the same token (a position the student did not
    reach counts as a miss). ``first_n_prefix``: mean length of the common prefix, over ``first_n``.
    """
    full = hits = positions = 0
    prefix = 0.0
    for key, t in teacher.items():
        s = student.get(key, [])
        full += s == t
        t_n, s_n = t[:first_n], s[:first_n]
        hits += sum(a == b for a, b in zip(t_n, s_n))
        positions += len(t_n)
        common = next((i for i, (a, b) in enumerate(zip(t_n, s_n)) if a != b), min(len(t_n), len(s_n)))
        prefix += common / max(1, min(first_n, len(t_n)))
    n = max(1, len(teacher))
    return {
        "full_answer_match": full / n,
        "first_n": first_n,
        "first_n_token_agreement": hits / max(1, positions),
        "first_n_prefix": prefix / n,
        "n": len(teacher),
    }


LOOP_NGRAM = 8  # an answer loops when some this many tokens in a row occur twice


def loops(tokens: list[int], n: int = LOOP_NGRAM) -> bool:
    """True when some n tokens in a row occur twice in ``tokens`` (overlaps count: a period-1 loop of n+1 tokens)."""
    seen = set()
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i : i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def looping(answers: dict[str, list[int]], n: int = LOOP_NGRAM) -> float:
    """The share of answers (token ids by sample id) that ``loops``."""
    return sum(loops(a, n) for a in answers.values()) / max(1, len(answers))


def print_freeform(report: dict, title: str = "") -> None:
    if title:
        print(title)
    ref = report.get("reference")
    if ref:
        print(
            f"  vs reference: exact {ref['exact_match']:.3f}  normalized exact {ref['normalized_exact_match']:.3f}  "
            f"token F1 {ref['token_f1']:.3f}   (n = {ref['n']})"
        )
    agr = report.get("agreement")
    if agr:
        print(
            f"  vs teacher (greedy): full answer {agr['full_answer_match']:.3f}  first-{agr['first_n']} tokens "
            f"{agr['first_n_token_agreement']:.3f}  common prefix {agr['first_n_prefix']:.3f}   (n = {agr['n']})"
        )
    loop = report.get("looping")
    if loop:
        teacher = f"  (teacher {loop['teacher']:.3f})" if "teacher" in loop else ""
        print(f"  answers repeating a {loop['ngram']}-gram: {loop['model']:.3f}{teacher}")
