"""A chat set answered by the teacher itself (``mmmamba data self-distill``).

Prompts (a ``.txt`` file, one prompt a line, or a ``.jsonl`` file of ``{"prompt": …}`` or chat
records, whose first human turn is taken) are answered by the teacher with ``mmmamba.infer.generate``
— left-padded batches sorted by length, greedy unless a temperature is given — and written as
chat JSONL (``train.jsonl`` / ``val.jsonl`` / ``test.jsonl``, the format ``conversations.py`` reads)
plus ``meta.json``. An answer that reaches ``max_new_tokens`` without the end-of-turn token, or is
empty, is dropped (counted in ``meta.json``): training on it would teach the student to stop early.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ..data.text_corpus import split_sizes
from ..data.tokenizer import ChatTokenizer
from ..errors import MmmambaError
from ..io import MAX_LINE_BYTES, parse_json, read_regular, write_json_atomic, write_jsonl_atomic
from ..models import Decoder
from .generate import generate_in_batches
from .sampling import SamplingConfig

MAX_PROMPTS = 10_000_000
MAX_PROMPT_BYTES = 1024**3


def read_prompts(path) -> list[str]:
    """Prompts from a .txt (one a line) or .jsonl file; every bad line is named by ``file:line``."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist" if not path.exists() else "is not a regular file"
        raise MmmambaError(f"--prompts {path}: {what}; give a .txt (one prompt a line) or .jsonl file")
    if path.suffix.lower() not in (".txt", ".jsonl"):
        raise MmmambaError(f"--prompts {path}: not a .txt (one prompt a line) or .jsonl file; rename or convert it")
    try:
        text = read_regular(path, "prompts file", MAX_PROMPT_BYTES).decode("utf-8-sig")  # without a byte-order mark
    except UnicodeDecodeError as e:
        raise MmmambaError(f"--prompts {path}: not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            raise MmmambaError(f"{path}:{n}: a prompt of {len(line)} characters; shorten or split it")
        if path.suffix.lower() != ".jsonl":
            prompts.append(line.strip().replace("\\n", "\n"))
            continue
        where = f"{path}:{n}"
        rec = parse_json(line, where, "line")
        prompt = rec.get("prompt") if isinstance(rec, dict) else None
        conv = rec.get("conversations") if isinstance(rec, dict) else None
        if prompt is None and isinstance(conv, list) and conv and isinstance(conv[0], dict):
            prompt = conv[0].get("value")
        if not isinstance(prompt, str) or not prompt.strip():
            raise MmmambaError(f'{where}: expected {{"prompt": "…"}} or a chat record with a first human turn')
        if "image" in rec or "images" in rec or "<image>" in prompt:
            raise MmmambaError(f"{where}: an image prompt; prompts are text only (give a chat set or text prompts)")
        prompts.append(prompt.strip())
    if not prompts:
        raise MmmambaError(f"--prompts {path}: holds no prompts")
    if len(prompts) > MAX_PROMPTS:
        raise MmmambaError(f"--prompts {path}: {len(prompts)} prompts; at most {MAX_PROMPTS}")
    return list(dict.fromkeys(prompts))  # each prompt once


@torch.no_grad()
def answer_prompts(
    teacher: Decoder,
    tok: ChatTokenizer,
    prompts: list[str],
    max_new_tokens: int = 256,
    batch_size: int = 32,
    sampling: SamplingConfig | None = None,
    progress: bool = True,
) -> list[tuple[list[int], bool]]:
    """Per prompt: its answer tokens (stop token dropped) and whether the answer ended by itself."""
    encoded = [tok.user_turn(p) for p in prompts]
    for p, ids in zip(prompts, encoded):
        if len(ids) + max_new_tokens > teacher.config.max_position:
            raise MmmambaError(
                f"--prompts: a prompt of {len(ids)} tokens with {max_new_tokens} new tokens exceeds the teacher's "
                f"max_position {teacher.config.max_position}: {p[:60]!r}…; shorten it or lower --max-new-tokens"
            )
    answers = generate_in_batches(
        teacher, encoded, None, max_new_tokens, batch_size, sampling, tok.stop_ids, tok.pad_id, progress,
        "teacher answers",
    )  # fmt: skip
    out = []
    for ids in answers:
        ended = bool(ids) and ids[-1] in tok.stop_ids
        out.append((ids[:-1] if ended else ids, ended))
    return out


def self_distill(
    teacher: Decoder,
    tok: ChatTokenizer,
    prompts: list[str],
    out,
    teacher_name: str,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    sampling: SamplingConfig | None = None,
    val_frac: float = 0.05,
    test_frac: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    cut_to_train: bool = False,
) -> dict:
    """Answer, split (by prompt, shuffled with ``seed``) and write the chat set; returns ``meta.json``.

    An answer cut by ``max_new_tokens`` is dropped, or with ``cut_to_train`` kept in the train split only
    (``"cut": true``): still the teacher's own text for distillation (stages 1–3 match the teacher on every
    token, whatever the answer's end), while val and test hold only answers that ended by themselves."""
    answers = answer_prompts(teacher, tok, prompts, max_new_tokens, batch_size, sampling, progress)
    records, cut, unfinished, empty = [], [], 0, 0
    for prompt, (ids, ended) in zip(prompts, answers):
        text = tok.decode(ids).strip()
        if not ended:
            unfinished += 1
            if cut_to_train and text:
                cut.append((prompt, text, True))
        elif not text:
            empty += 1
        else:
            records.append((prompt, text, False))
    if not records:
        raise MmmambaError(
            f"no prompt got a complete answer within --max-new-tokens {max_new_tokens} ({unfinished} unfinished, "
            f"{empty} empty); raise --max-new-tokens"
        )
    random.Random(seed).shuffle(records)
    spare = 1 if cut else 0  # cut answers fill train, so every complete answer may go to val or test
    n_val, n_test = split_sizes(len(records) + spare, val_frac, test_frac, "answered prompts")
    splits = {
        "test": records[len(records) - n_test :] if n_test else [],
        "val": records[len(records) - n_test - n_val : len(records) - n_test] if n_val else [],
        "train": records[: len(records) - n_test - n_val] + cut,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, recs in splits.items():
        rows = [
            {
                "id": f"{split}-{i:06d}",
                "family": "chat",
                "conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": a}],
            }
            | ({"cut": True} if was_cut else {})
            for i, (p, a, was_cut) in enumerate(recs)
        ]
        write_jsonl_atomic(out / f"{split}.jsonl", rows)
    s = sampling or SamplingConfig()
    meta = {
        "format": "mmmamba-chat",
        "teacher": str(teacher_name),
        "prompts": len(prompts),
        "kept": len(records),
        "dropped_unfinished": unfinished - len(cut),
        "cut_kept_in_train": len(cut),
        "dropped_empty": empty,
        "max_new_tokens": max_new_tokens,
        "sampling": {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "seed": s.seed},
        "splits": {k: len(v) for k, v in splits.items()},
    }
    write_json_atomic(out / "meta.json", meta)
    return meta
