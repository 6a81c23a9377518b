"""Teacher-written text (``mmmamba data teacher-text``): the teacher continues prefixes of real training
documents and answers chat prompts, sampled at a temperature with top-p, and the result is a text
corpus (``train/val/test.jsonl`` + ``corpus.json``, the format ``data/text_corpus.py`` reads) that
distillation pools like any other.

- **Prefixes** come from a text corpus's *train* split only (``train.jsonl``): held-out documents
  never serve as prefixes. Each text row is ``prefix_tokens`` consecutive tokens of one train chunk
  at an offset drawn from the seed. **Prompts** are a ``.txt`` / ``.jsonl`` file or a chat folder's
  ``train.jsonl``; each becomes the teacher's user turn, answered ``per_prompt`` times.
- **Sampling**: exact top-p by inverse CDF from uniforms drawn by one generator per batch, seeded from
  (seed, batch number), so a batch's tokens are a pure function of the seed: ``nucleus_sample`` (sorted
  order, a pre-sort of ``candidates`` tokens) or ``nucleus_sample_unsorted`` (vocabulary order, the nucleus
  found by bisection: no sort and no host sync). Both draw the same distribution, not the same tokens.
- **Decoding**: one preallocated cache of ``batch_size`` rows serves every batch (reset in place),
  driven by the static decode step (``DecodeStep``: a CUDA graph on CUDA), so memory is constant and
  the graph is captured once. A short last batch is filled with copies of its first row (discarded).
- **Records**: ``{"id", "source", "row", "text", "input_ids", "prefix_tokens"}`` (``row``: its place in
  the plan); ``input_ids`` is the prefix (or prompt turn) followed by the teacher's tokens up to and
  including its first stop token. Rows are split into train/val/test by their source document (or
  prompt), never across.
- **Resumable**: each finished batch is written atomically to ``parts/``; a rerun with the same
  settings skips them, other settings are refused. The corpus files are written last, atomically.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..checks import MAX_BATCH
from ..data.text_corpus import check_corpus_vocab, split_sizes
from ..data.tokenizer import ChatTokenizer
from ..errors import MmmambaError
from ..io import iter_jsonl, read_json, remove_tree, write_json_atomic, write_jsonl_atomic
from ..models import Decoder
from ..models.cache import ModelCache
from .decode_step import MODES, DecodeStep
from .generate import left_pad, prefill_ids
from .sampling import nucleus_sample, nucleus_sample_unsorted

SPLITS = ("train", "val", "test")
SAMPLERS = ("sorted", "unsorted")
PLAN_FILE = "teacher_text.json"


@dataclass
class TeacherTextConfig:
    prefix_tokens: int = 64  # tokens of a train chunk that each text row starts from
    new_tokens: int = 192  # tokens the teacher writes per row (fewer when it stops)
    text_rows: int = 1000  # rows from corpus prefixes
    per_prompt: int = 1  # answers per chat prompt
    batch_size: int = 256
    temperature: float = 1.0
    top_p: float = 0.95
    candidates: int = 1024  # tokens sorted for top-p before a full sort is needed
    seed: int = 0
    val_frac: float = 0.02
    test_frac: float = 0.02
    decode: str = "auto"  # DecodeStep mode
    sampler: str = "sorted"  # top-p by "sorted" (nucleus_sample) or "unsorted" (nucleus_sample_unsorted)

    def check(self) -> None:
        ints = {"prefix_tokens": (1, 1 << 20), "new_tokens": (1, 1 << 20), "text_rows": (0, 1 << 31)}
        ints |= {"per_prompt": (1, MAX_BATCH), "batch_size": (1, MAX_BATCH), "candidates": (1, 1 << 24)}
        for name, (lo, hi) in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise MmmambaError(f"--{name.replace('_', '-')} {v}: give a whole number from {lo} to {hi}")
        if not 0 < self.temperature <= 1e4:
            raise MmmambaError(f"--temperature {self.temperature}: give a number above 0 (1 = the teacher's own)")
        if not 0 < self.top_p <= 1:
            raise MmmambaError(f"--top-p {self.top_p}: give a number in (0, 1]")
        if not (0 <= self.val_frac < 1 and 0 <= self.test_frac < 1 and self.val_frac + self.test_frac < 1):
            raise MmmambaError(f"--val-frac {self.val_frac} + --test-frac {self.test_frac}: leave some for training")
        if self.decode not in MODES:
            raise MmmambaError(f"--decode {self.decode}: use one of {', '.join(MODES)}")
        if self.sampler not in SAMPLERS:
            raise MmmambaError(f"--sampler {self.sampler}: use one of {', '.join(SAMPLERS)}")

    def settings(self) -> dict:
        """The settings a plan records: a ``sorted`` sampler (the only one before ``sampler`` existed) is left
        out, so that plans written before still match on resume."""
        return {k: v for k, v in asdict(self).items() if not (k == "sampler" and v == "sorted")}


@dataclass
class Row:
    source: str  # where the prefix came from: ``corpus/train.jsonl:LINE@OFFSET`` or ``prompts:N#K``
    group: str  # the unit of the split: the source document, or the prompt
    prefix: list[int]


def corpus_prefixes(corpus_dir, cfg: TeacherTextConfig, vocab_size: int, tok=None) -> list[Row]:
    """``cfg.text_rows`` prefixes drawn (with the seed) from the *train* split of a text corpus."""
    path = Path(corpus_dir) / "train.jsonl"
    if not (Path(corpus_dir) / "corpus.json").is_file() or not path.is_file():
        raise MmmambaError(
            f"--prefixes {corpus_dir}: no corpus.json / train.jsonl; build a text corpus with `mmmamba data text`"
        )
    check_corpus_vocab(corpus_dir, tok, vocab_size, "--prefixes")
    windows = []
    for where, rec in iter_jsonl(path):
        ids = rec.get("input_ids") if isinstance(rec, dict) else None
        if not isinstance(ids, list) or not ids or not all(type(i) is int and 0 <= i < vocab_size for i in ids):
            raise MmmambaError(f"{where}: 'input_ids' must be a non-empty list of token ids below {vocab_size}")
        if len(ids) >= cfg.prefix_tokens:
            windows.append((where, str(rec.get("source", where)), ids))
    if not windows and cfg.text_rows:
        raise MmmambaError(
            f"--prefixes {corpus_dir}: no train chunk holds {cfg.prefix_tokens} tokens; lower --prefix-tokens"
        )
    rng = random.Random(cfg.seed)
    rows = []
    for _ in range(cfg.text_rows):
        where, doc, ids = windows[rng.randrange(len(windows))]
        off = rng.randrange(len(ids) - cfg.prefix_tokens + 1)
        rows.append(Row(f"{where}@{off}", doc, ids[off : off + cfg.prefix_tokens]))
    return rows


def prompt_rows(prompts: list[str], tok: ChatTokenizer, cfg: TeacherTextConfig, name: str) -> list[Row]:
    return [
        Row(f"{name}:{n}#{k}", f"prompt:{p}", tok.user_turn(p))
        for n, p in enumerate(prompts, 1)
        for k in range(cfg.per_prompt)
    ]


def batches_of(rows: list[Row], batch_size: int) -> list[list[int]]:
    """Row indices per batch: text rows in plan order (one prefix length), prompts sorted by length."""
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_len.setdefault(len(r.prefix), []).append(i)
    order = [i for n in sorted(by_len) for i in by_len[n]]
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def split_groups(rows: list[Row], cfg: TeacherTextConfig) -> dict[str, str]:
    """group → split: the groups shuffled with the seed, the last ``test_frac`` to test, ``val_frac`` before."""
    groups = sorted({r.group for r in rows})
    random.Random(cfg.seed + 1).shuffle(groups)
    n_val, n_test = split_sizes(len(groups), cfg.val_frac, cfg.test_frac, "teacher-text sources (prefixes, prompts)")
    out = {}
    for i, g in enumerate(groups):
        out[g] = "test" if i >= len(groups) - n_test else "val" if i >= len(groups) - n_test - n_val else "train"
    return out


def batch_seed(seed: int, batch: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{batch}".encode(), digest_size=8).digest(), "little") >> 1


def reset_cache(cache: ModelCache) -> None:
    """Empty the cache in place (the buffers a captured graph reads stay where they are). KV tensors are
    left as they are: a slot is read only once ``key_valid`` marks it, and prefill rewrites it first."""
    for name, buf in cache.named_buffers():
        if not name.endswith((".k", ".v")):
            buf.zero_()
    for layer in cache:
        layer.length = 0


class Writer:
    """One cache of ``batch`` rows × ``max_length`` slots and its decode step, reused for every batch."""

    def __init__(self, model: Decoder, cfg: TeacherTextConfig, max_length: int, stop_ids, pad_id: int):
        self.model, self.cfg, self.pad_id = model, cfg, pad_id
        self.device = model.embed_tokens.weight.device
        self.cache = model.make_cache(cfg.batch_size, max_length)
        self.step = DecodeStep(model, self.cache, cfg.decode)
        self.stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=self.device)
        if cfg.sampler == "sorted":
            self.sample = lambda logits, u: nucleus_sample(logits, cfg.temperature, cfg.top_p, u, cfg.candidates)
        else:
            self.sample = lambda logits, u: nucleus_sample_unsorted(logits, cfg.temperature, cfg.top_p, u)

    @torch.no_grad()
    def write(self, prefixes: list[list[int]], seed: int) -> list[list[int]]:
        """Each prefix's new tokens, up to and including the first stop token (at most ``new_tokens``)."""
        cfg, b = self.cfg, self.cfg.batch_size
        n = len(prefixes)
        prefixes = prefixes + [prefixes[0]] * (b - n)  # a full batch: one graph serves every batch
        ids, mask = left_pad(prefixes, self.pad_id, self.device)
        reset_cache(self.cache)
        logits = prefill_ids(self.model, ids, None, mask, self.cache)
        g = torch.Generator(device=self.device).manual_seed(seed)
        tokens = torch.zeros(b, cfg.new_tokens, dtype=torch.long, device=self.device)
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        steps = 0
        for i in range(cfg.new_tokens):
            u = torch.rand(b, generator=g, device=self.device, dtype=torch.float64)
            token = self.sample(logits, u)
            tokens[:, i] = token
            steps = i + 1
            done |= torch.isin(token, self.stops)
            if i == cfg.new_tokens - 1 or (i % 16 == 15 and bool(done[:n].all())):
                break
            logits = self.step(token)
        out = []
        for row in tokens[:n, :steps].tolist():
            end = next((j + 1 for j, t in enumerate(row) if t in set(self.stops.tolist())), len(row))
            out.append(row[:end])
        return out


def read_part(path: Path, rows: list[int], new_tokens: int, vocab_size: int) -> dict[int, list[int]] | None:
    """A finished batch's rows → their new tokens, or None where there is none to take up: no file, or one
    that is not exactly that batch's rows in order with at most ``new_tokens`` ids in the vocabulary (a
    damaged part is said once and written again)."""
    if not path.is_file():
        return None
    try:
        recs = [rec for _, rec in iter_jsonl(path)]
        ok = [r.get("row") if isinstance(r, dict) else None for r in recs] == rows and all(
            isinstance(r["new"], list) and len(r["new"]) <= new_tokens
            and all(type(t) is int and 0 <= t < vocab_size for t in r["new"]) for r in recs
        )  # fmt: skip
        reason = "not that batch's rows and token ids"
    except MmmambaError as e:
        ok, reason = False, str(e)
    if ok:
        return {r["row"]: r["new"] for r in recs}
    print(f"{path}: a damaged finished batch ({reason}); writing it again", file=sys.stderr)
    return None


def _plan_record(rows: list[Row], cfg: TeacherTextConfig, sources: dict) -> dict:
    digest = hashlib.sha256()
    for r in rows:
        digest.update(json.dumps([r.source, r.prefix]).encode())
    return {"format": "mmmamba-teacher-text-plan", "settings": cfg.settings(), "rows": len(rows), **sources,
            "rows_sha256": digest.hexdigest()}  # fmt: skip


def write_teacher_text(
    teacher: Decoder,
    tok: ChatTokenizer,
    rows: list[Row],
    out,
    cfg: TeacherTextConfig,
    sources: dict,
    progress: bool = True,
) -> dict:
    """Write the corpus for ``rows`` into ``out`` (resuming from ``out/parts``); returns ``corpus.json``.
    ``sources`` names the teacher, the prefix corpus and the prompts file (recorded as given)."""
    cfg.check()
    if not rows:
        raise MmmambaError("no rows to write: give --prefixes with --text-rows above 0, or --prompts")
    out = Path(out)
    longest = max(len(r.prefix) for r in rows)
    if longest + cfg.new_tokens > teacher.config.max_position:
        raise MmmambaError(
            f"a prefix of {longest} tokens + {cfg.new_tokens} new tokens exceeds the teacher's max_position "
            f"{teacher.config.max_position}; lower --new-tokens or --prefix-tokens, or shorten the prompts"
        )
    plan = _plan_record(rows, cfg, sources)
    if (out / PLAN_FILE).exists() and read_json(out / PLAN_FILE, "teacher-text plan") != plan:
        raise MmmambaError(
            f"{out}: holds teacher text of other settings or inputs ({PLAN_FILE} differs); use the same or a new --out"
        )
    if (out / "corpus.json").is_file() and (out / PLAN_FILE).exists():
        return read_json(out / "corpus.json", "corpus file")  # finished before
    write_json_atomic(out / PLAN_FILE, plan, digits=None)  # compared on resume: exact
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    batches = batches_of(rows, cfg.batch_size)
    vocab = teacher.config.vocab_size
    done = {
        k: part
        for k in range(len(batches))
        if (part := read_part(parts / f"batch-{k:06d}.jsonl", batches[k], cfg.new_tokens, vocab))
    }
    todo = [k for k in range(len(batches)) if k not in done]
    writer = Writer(teacher, cfg, longest + cfg.new_tokens, (*tok.stop_ids, tok.end_id), tok.pad_id) if todo else None
    total = sum(len(batches[k]) for k in todo) * cfg.new_tokens
    bar = tqdm(total=total, desc="teacher text", unit="tok", unit_scale=True, disable=not progress)
    t0, written = time.time(), 0
    for k in todo:
        idx = batches[k]
        new = writer.write([rows[i].prefix for i in idx], batch_seed(cfg.seed, k))
        write_jsonl_atomic(parts / f"batch-{k:06d}.jsonl", [{"row": i, "new": n} for i, n in zip(idx, new)])
        done[k] = dict(zip(idx, new))
        written += sum(len(n) for n in new)
        bar.update(len(idx) * cfg.new_tokens)
        bar.set_postfix(written=f"{written / max(1e-9, time.time() - t0):.0f} tok/s", refresh=False)
    bar.close()
    seconds = time.time() - t0
    new_of = {i: new for k in range(len(batches)) for i, new in done[k].items()}
    split_of = split_groups(rows, cfg)
    records: dict[str, list[dict]] = {s: [] for s in SPLITS}
    stops = set(tok.stop_ids) | {tok.end_id}
    dropped = 0
    for i, r in enumerate(rows):
        new = new_of[i]
        if not [t for t in new if t not in stops]:
            dropped += 1  # the teacher stopped at once: nothing of its own to learn from
            continue
        s = split_of[r.group]
        ids = r.prefix + new
        records[s].append({"id": f"{s}-{len(records[s]):07d}", "source": r.source, "row": i, "text": tok.decode(ids),
                           "input_ids": ids, "prefix_tokens": len(r.prefix)})  # fmt: skip
    if not records["train"]:
        raise MmmambaError("every row went to val/test or was empty; lower --val-frac/--test-frac or add rows")
    for s in SPLITS:
        write_jsonl_atomic(out / f"{s}.jsonl", records[s])
    n_new = sum(len(r["input_ids"]) - r["prefix_tokens"] for s in SPLITS for r in records[s])
    info = {
        "format": "mmmamba-text-corpus",
        "tokenizer": str(sources.get("teacher")),
        "vocab_size": teacher.config.vocab_size,
        "seq_len": longest + cfg.new_tokens,
        "min_tokens": 1,
        "seed": cfg.seed,
        "splits": {s: {"chunks": len(v), "tokens": sum(len(r["input_ids"]) for r in v)} for s, v in records.items()},
        "documents": len({r.group for r in rows}),
        "teacher_text": {
            **sources,
            "prefix_split": "train",  # held-out documents never serve as prefixes
            "sampling": {
                "temperature": cfg.temperature,
                "top_p": cfg.top_p,
                "candidates": cfg.candidates,
                "sampler": cfg.sampler,
            },
            "seed": cfg.seed,
            "batch_seeds": "blake2b(f'{seed}:{batch}'), one generator per batch",
            "settings": asdict(cfg),
            "rows": len(rows),
            "dropped_empty": dropped,
            "new_tokens": n_new,
            "seconds_this_call": round(seconds, 2),
            "new_tokens_per_s_this_call": round(written / seconds, 1) if written and seconds > 0 else None,
        },
    }
    write_json_atomic(out / "corpus.json", info)
    remove_tree(parts)
    return info


def plan_rows(prefixes_dir, prompts_path, tok: ChatTokenizer, cfg: TeacherTextConfig, vocab_size: int) -> list[Row]:
    """Text rows from ``prefixes_dir`` (a text corpus: its train split) and chat rows from ``prompts_path``
    (a prompts file, or a chat folder: its train split); either may be None."""
    from .self_distill import read_prompts

    if prefixes_dir is None and prompts_path is None:
        raise MmmambaError("give --prefixes (a text corpus) or --prompts (a prompts file or chat folder), or both")
    rows = corpus_prefixes(prefixes_dir, cfg, vocab_size, tok) if prefixes_dir is not None else []
    if prompts_path is not None:
        p = Path(prompts_path)
        if p.is_dir():  # a chat set: its train prompts only (its val and test stay held out)
            if not (p / "train.jsonl").is_file():
                raise MmmambaError(f"--prompts {p}: a folder without train.jsonl; give a chat folder or a prompts file")
            p = p / "train.jsonl"
        rows += prompt_rows(read_prompts(p), tok, cfg, str(prompts_path))
    return rows
