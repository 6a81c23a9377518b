"""``mmmamba eval``: greedy answers to the first question of each sample, scored three ways.

1. the task suite's exact match per family (``tasks.score``);
2. free-form scores against the reference answers (exact, normalized exact, token F1);
3. with a teacher: agreement of the model's greedy answer with the teacher's (``freeform.agreement``).

The answer cap defaults to the longest reference answer (in tokens, end-of-turn included) plus a
few tokens of slack, so a long reference is never cut short by the cap.
"""

from __future__ import annotations

from ..data.conversations import Sample
from ..data.tokenizer import ChatTokenizer
from ..models import Decoder
from .freeform import LOOP_NGRAM, agreement, looping, reference_scores
from .tasks import answer_records, check_prompts, check_same_vocabulary, decode_answer, predict_ids, score

SLACK = 4  # tokens beyond the longest reference (a trailing space or newline before the end-of-turn)


def default_max_new_tokens(tok: ChatTokenizer, samples: list[Sample]) -> int:
    return max(len(tok.answer(s.turns[0][1])) for s in samples) + SLACK


def evaluate(
    model: Decoder,
    tok: ChatTokenizer,
    samples: list[Sample],
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    teacher: Decoder | None = None,
    first_n: int = 16,
    progress: bool = True,
    keep_answers: bool = False,
) -> dict:
    """The report: task-suite scores, ``max_new_tokens``, ``free_form`` {reference, looping, agreement?}; with
    ``keep_answers`` also ``answers``, one record a sample (``tasks.answer_records``)."""
    n_new = max_new_tokens or default_max_new_tokens(tok, samples)
    check_prompts(model, tok, samples, n_new)
    check_same_vocabulary(model, teacher, "agreement")
    ids = predict_ids(model, tok, samples, batch_size, n_new, progress)
    text = {k: decode_answer(tok, v) for k, v in ids.items()}
    report = score(samples, text)
    report["max_new_tokens"] = n_new
    free = {"reference": reference_scores(text, {s.id: s.turns[0][1] for s in samples})}
    free["looping"] = {"ngram": LOOP_NGRAM, "model": looping(ids)}
    if teacher is not None:
        check_prompts(teacher, tok, samples, n_new)
        wanted = predict_ids(teacher, tok, samples, batch_size, n_new, progress, desc="teacher")
        free["agreement"] = agreement(ids, wanted, first_n)
        free["looping"]["teacher"] = looping(wanted)
    report["free_form"] = free
    if keep_answers:
        report["answers"] = answer_records(samples, text)
    return report
