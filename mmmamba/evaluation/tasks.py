"""Exact-match task accuracy: greedy answers to the first question of each sample, per family."""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from ..data.conversations import Sample
from ..data.images import image_processor
from ..data.tokenizer import IMAGE_MARK, ChatTokenizer
from ..errors import MmmambaError
from ..infer.generate import generate_in_batches
from ..models import Decoder


def is_correct(answer: str, reference: str) -> bool:
    """The suite's exact match: the same text once surrounding white space is dropped."""
    return answer.strip() == reference.strip()


def answer_records(samples: list[Sample], predictions: dict[str, str]) -> list[dict]:
    """One record a sample, for reading a model's mistakes: what was asked, the reference, the answer."""
    return [
        {
            "id": s.id,
            "family": s.family,
            "images": len(s.images),
            "question": s.turns[0][0],
            "reference": s.turns[0][1],
            "answer": predictions.get(s.id, ""),
            "correct": is_correct(predictions.get(s.id, ""), s.turns[0][1]),
        }
        for s in samples
    ]


def score(samples: list[Sample], predictions: dict[str, str]) -> dict:
    """Compare predicted answers (by sample id) with the references; missing predictions count as wrong.

    ``mean_accuracy`` is the mean over families (each family weighs the same);
    ``recall_by_images`` splits the multi-image family by its number of images.
    """
    hits: dict[str, list[bool]] = defaultdict(list)
    by_k: dict[int, list[bool]] = defaultdict(list)
    for s in samples:
        ok = is_correct(predictions.get(s.id, ""), s.turns[0][1])
        hits[s.family].append(ok)
        if len(s.images) > 1:
            by_k[len(s.images)].append(ok)
    per_family = {f: sum(v) / len(v) for f, v in sorted(hits.items())}
    stderr = {f: standard_error(per_family[f], len(hits[f])) for f in per_family}
    n_fam = max(1, len(per_family))
    return {
        "mean_accuracy": sum(per_family.values()) / n_fam,
        "mean_accuracy_stderr": math.sqrt(sum(se**2 for se in stderr.values())) / n_fam,
        "per_family": per_family,
        "per_family_stderr": stderr,
        "per_family_n": {f: len(hits[f]) for f in per_family},
        "recall_by_images": {str(k): sum(v) / len(v) for k, v in sorted(by_k.items())},
        "n": len(samples),
    }


def standard_error(p: float, n: int) -> float:
    """The standard error of an accuracy ``p`` over ``n`` independent samples, sqrt(p (1 - p) / n)."""
    return math.sqrt(p * (1 - p) / n) if n else 0.0


def check_prompts(model: Decoder, tok: ChatTokenizer, samples: list[Sample], max_new_tokens: int = 16) -> None:
    """Every first question fits the model with room for its answer; a long one is named by file and line."""
    limit = model.config.max_position
    per_image = model.config.vision.tokens_per_tile * model.config.vision.max_tiles if model.config.vision else 0
    for s in samples:
        n = len(tok.user_turn(s.turns[0][0].replace(IMAGE_MARK, ""))) + (per_image + 2) * len(s.images)
        if n + max_new_tokens > limit:
            raise MmmambaError(
                f"{s.where or s.id}: the question takes about {n} tokens, with {max_new_tokens} for the answer more "
                f"than the model's max_position {limit}; shorten or drop it"
            )


@torch.no_grad()
def check_same_vocabulary(model: Decoder, teacher: Decoder | None, need: str) -> None:
    """A teacher compared token by token with the model must share its vocabulary (``need``: what for)."""
    if teacher is not None and teacher.config.vocab_size != model.config.vocab_size:
        raise MmmambaError(
            f"--teacher has a vocabulary of {teacher.config.vocab_size}, the model {model.config.vocab_size}; "
            f"{need} needs the same tokenizer"
        )


def predict_ids(
    model: Decoder,
    tok: ChatTokenizer,
    samples: list[Sample],
    batch_size: int = 64,
    max_new_tokens: int = 16,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, list[int]]:
    """Greedy answer tokens by sample id (the stop token included when it came within
    ``max_new_tokens``). Prompts are batched by length; a batch answers as each prompt alone."""
    model.eval()
    images = image_processor(model.config.vision)

    def prompt(s: Sample) -> tuple[list[int], torch.Tensor | None]:
        if images is None:
            return tok.user_turn(s.turns[0][0]), None
        pixels, counts = images.load_many(s.images)
        return tok.user_turn(s.turns[0][0], image_tokens=counts), pixels

    encoded = [prompt(s) for s in samples]
    answers = generate_in_batches(
        model,
        [ids for ids, _ in encoded],
        None if images is None else [pixels for _, pixels in encoded],
        max_new_tokens,
        batch_size,
        stop_ids=tok.stop_ids,
        pad_id=tok.pad_id,
        progress=progress,
        desc=desc,
    )
    return {s.id: ids for s, ids in zip(samples, answers)}


def decode_answer(tok: ChatTokenizer, ids: list[int]) -> str:
    return tok.decode([t for t in ids if t not in tok.stop_ids])


def predict(
    model: Decoder,
    tok: ChatTokenizer,
    samples: list[Sample],
    batch_size: int = 64,
    max_new_tokens: int = 16,
    progress: bool = True,
) -> dict[str, str]:
    """Greedy answers (text) by sample id; see ``predict_ids``."""
    ids = predict_ids(model, tok, samples, batch_size, max_new_tokens, progress)
    return {k: decode_answer(tok, v) for k, v in ids.items()}


def print_table(report: dict, title: str = "") -> None:
    if title:
        print(title)
    se, n = report.get("per_family_stderr", {}), report.get("per_family_n", {})
    for f, acc in report["per_family"].items():
        print(f"  {f:<12} {acc:6.3f}" + (f" ± {se[f]:.3f}  (n = {n[f]})" if f in se else ""))
    for k, acc in report["recall_by_images"].items():
        print(f"  recall@{k:<5} {acc:6.3f}")
    mean_se = f" ± {report['mean_accuracy_stderr']:.3f}" if "mean_accuracy_stderr" in report else ""
    print(f"  {'mean':<12} {report['mean_accuracy']:6.3f}{mean_se}  (n = {report['n']}; ± one standard error)")
