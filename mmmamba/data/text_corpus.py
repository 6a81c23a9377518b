"""Plain text, Markdown and HTML files → a tokenised text corpus for distillation (stages 1–3 need
only text, no answers).

Output folder (``mmmamba data text``): ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` and
``corpus.json``. One chunk a line: ``{"id", "source", "text", "input_ids"}`` where ``input_ids``
(authoritative; at most ``seq_len`` tokens) is the chunk under the named tokenizer and ``text`` its
decoding, for reading. A document is the tokenizer's ``bos`` (if it has one), its text, then
``end`` (eos), cut into consecutive windows of ``seq_len`` tokens; a window shorter than
``min_tokens`` is dropped. Documents (not chunks) are assigned to splits, so held-out text never
shares a document with training text. ``corpus.json`` records the tokenizer, ``seq_len``, the
splits' sizes and every source file.

Near-duplicate documents (the same page as HTML and as its reStructuredText / Markdown source, a
file copied twice) would put the same text in train and test. A document of which at least
``near_duplicate`` (default 0.3) of its 8-word shingles lie in one kept document is dropped (measured on
the Python docs: a page and its source share 0.5–0.9, two different pages under 0.02); HTML is kept
before Markdown before plain text, then by path. ``corpus.json`` lists each dropped file and the
one it duplicates.

HTML is reduced to its main content (an element with ``role="main"``, ``<main>`` or ``<article>``
when there is one, else ``<body>``) without scripts, styles, navigation, headers and footers;
Markdown loses its link targets, images and emphasis marks. Nothing is fetched or executed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from tqdm import tqdm

from ..errors import MmmambaError
from ..io import check_regular, iter_jsonl, read_json, read_regular, write_json_atomic, write_text_atomic
from .conversations import Example
from .tokenizer import ChatTokenizer

SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".rst": "text"}
SUFFIXES |= {".html": "html", ".htm": "html", ".xhtml": "html"}
MAX_FILE_BYTES = 64 * 1024**2
SPLITS = ("train", "val", "test")

_BLOCK = {"p", "div", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "br", "tr", "dt", "dd", "table"}
_BLOCK |= {"section", "blockquote", "article", "main", "hr", "figcaption", "dl"}
_SKIP = {"script", "style", "nav", "header", "footer", "head", "noscript", "svg", "form", "button", "template"}
_VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


class _HTMLText(HTMLParser):
    """Visible text of the main content; block elements become line breaks, ``<pre>`` keeps its spacing."""

    def __init__(self, main_only: bool):
        super().__init__(convert_charrefs=True)
        self.main_only = main_only
        self.main: tuple[str, int] | None = None  # (tag, nesting of that tag) while inside the main element
        self.skip: dict[str, int] = {}
        self.pre = 0
        self.done = False
        self.parts: list[str] = []

    def _inside(self) -> bool:
        return not self.done and (self.main is not None or not self.main_only) and not any(self.skip.values())

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self.main is not None and tag == self.main[0]:
            self.main = (tag, self.main[1] + 1)
        elif self.main is None and self.main_only and (a.get("role") == "main" or tag in ("main", "article")):
            self.main = (tag, 1)
        if tag in _VOID:
            if tag in ("br", "hr") and self._inside():
                self.parts.append("\n")
            return
        classes = (a.get("class") or "").split()
        if tag in _SKIP or a.get("role") == "navigation" or "headerlink" in classes or a.get("hidden") is not None:
            self.skip[tag] = self.skip.get(tag, 0) + 1
        if tag == "pre":
            self.pre += 1
        if tag in _BLOCK and self._inside():
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in _BLOCK and self._inside():
            self.parts.append("\n")
        if self.skip.get(tag):
            self.skip[tag] -= 1
        if tag == "pre" and self.pre:
            self.pre -= 1
        if self.main is not None and tag == self.main[0]:
            depth = self.main[1] - 1
            self.main = None if depth == 0 else (tag, depth)
            self.done = depth == 0  # the main element is over: keep nothing after it

    def handle_data(self, data):
        if self._inside():
            self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    main = bool(re.search(r"""role=["']main["']|<main[\s>]|<article[\s>]""", html, re.I))
    parser = _HTMLText(main)
    parser.feed(html)
    parser.close()
    return _tidy("".join(parser.parts).replace("¶", ""))


def markdown_to_text(md: str) -> str:
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", md)  # images → alt text
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)  # links → their text
    text = re.sub(r"<[^>\n]+>", "", text)  # inline HTML tags
    text = re.sub(r"^\s{0,3}#{1,6}\s*", "", text, flags=re.M)  # heading marks
    text = re.sub(r"(\*\*|__|\*|`{1,3})", "", text)  # emphasis and code marks
    return _tidy(text)


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def read_document(path: Path, where: str | None = None) -> str:
    """A file's text (HTML and Markdown reduced to prose); a file that is not UTF-8 is an error naming it."""
    where = where or str(path)
    data = read_regular(path, "text/Markdown/HTML file", MAX_FILE_BYTES)  # a FIFO is refused, never opened to wait
    try:
        raw = data.decode("utf-8-sig")  # a leading byte-order mark is no text
    except UnicodeDecodeError as e:
        raise MmmambaError(f"{where}: not UTF-8 text (byte {e.start}); re-save it as UTF-8 or leave it out") from None
    kind = SUFFIXES[path.suffix.lower()]
    return html_to_text(raw) if kind == "html" else markdown_to_text(raw) if kind == "markdown" else _tidy(raw)


def collect_files(inputs: list[str], say_skipped: bool = True) -> list[Path]:
    """Files named, and the text/Markdown/HTML files under folders named (sorted, each once); with
    ``say_skipped``, one line on stderr per folder for the entries that are not regular files."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise MmmambaError(f"--inputs {item}: does not exist; name text/Markdown/HTML files or folders")
        if p.is_dir():
            named = [f for f in p.rglob("*") if f.suffix.lower() in SUFFIXES]
            found = sorted(f for f in named if f.is_file())
            skipped = sorted(f for f in named if not f.is_file() and not f.is_dir())  # FIFOs, dangling links, loops
            if skipped and say_skipped:  # said, not fatal: doc folders often link to files not installed
                print(
                    f"--inputs {item}: skipped {len(skipped)} entries that are not regular files (e.g. {skipped[0]})",
                    file=sys.stderr,
                )
            if not found:
                raise MmmambaError(f"--inputs {item}: no {'/'.join(sorted(SUFFIXES))} files in this folder")
            files += found
        elif not p.is_file():
            check_regular(p, "text/Markdown/HTML file")
        elif p.suffix.lower() not in SUFFIXES:
            raise MmmambaError(f"--inputs {item}: unknown kind {p.suffix or '(no suffix)'}; use {sorted(SUFFIXES)}")
        else:
            files.append(p)
    return list(dict.fromkeys(files))


@dataclass
class Chunk:
    id: str
    source: str
    input_ids: list[int]


def chunk_document(ids: list[int], seq_len: int, min_tokens: int) -> list[list[int]]:
    windows = [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]
    return [w for w in windows if len(w) >= min_tokens]


def shingles(text: str, n: int = 8) -> set[int]:
    """Hashes of the document's n-word windows (lower-case letters and digits only, so markup differs little)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    windows = (" ".join(words[i : i + n]).encode() for i in range(max(1, len(words) - n + 1)))
    return {int.from_bytes(hashlib.blake2b(w, digest_size=8).digest(), "little") for w in windows}  # stable


_KIND_ORDER = {"html": 0, "markdown": 1, "text": 2}


def drop_near_duplicates(docs: list[tuple[str, str]], threshold: float) -> tuple[list[tuple[str, str]], list]:
    """Keep one document of each near-duplicate group: ``(kept docs, [[dropped path, kept path], ...])``.

    Documents are visited HTML first, then Markdown, then text, each by path; one is dropped when at
    least ``threshold`` of its shingles belong to a single document kept before it."""
    order = sorted(docs, key=lambda d: (_KIND_ORDER[SUFFIXES[Path(d[0]).suffix.lower()]], d[0]))
    owner: dict[int, int] = {}  # shingle → index in kept of the first kept document holding it
    kept: list[tuple[str, str]] = []
    dropped = []
    for source, text in order:
        sh = shingles(text)
        shared = Counter(owner[h] for h in sh if h in owner)
        if shared:
            k, n = shared.most_common(1)[0]
            if n >= threshold * len(sh):
                dropped.append([source, kept[k][0]])
                continue
        for h in sh:
            owner.setdefault(h, len(kept))
        kept.append((source, text))
    kept.sort(key=lambda d: d[0])  # the split shuffle starts from path order, as without duplicates
    return kept, dropped


def split_sizes(n: int, val_frac: float, test_frac: float, what: str) -> tuple[int, int]:
    """(n_val, n_test) of ``n`` shuffled items (documents, answers, groups): each fraction of ``n``, rounded,
    and at least one item for a split whose fraction is above 0, so that no split asked for comes out empty.
    Fewer items than that needs (one each, train included) are refused, naming ``what`` they are."""
    asked = [name for name, frac in (("val", val_frac), ("test", test_frac)) if frac > 0]
    if n < 1 + len(asked):
        raise MmmambaError(
            f"{n} {what}: too few for train{''.join(', ' + a for a in asked)} (one each at least); give more, or "
            "set --val-frac/--test-frac 0"
        )
    n_val = max(round(n * val_frac), 1) if val_frac > 0 else 0
    n_test = max(round(n * test_frac), 1) if test_frac > 0 else 0
    while n_val + n_test > n - 1:  # train keeps one at least: take from the larger held-out split
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def split_of(index: int, n_docs: int, val_frac: float, test_frac: float) -> str:
    """Documents are shuffled first; the last ``test_frac`` go to test, the ``val_frac`` before them to val."""
    n_val, n_test = split_sizes(n_docs, val_frac, test_frac, "documents")
    if index >= n_docs - n_test:
        return "test"
    return "val" if index >= n_docs - n_test - n_val else "train"


def build_text_corpus(
    inputs: list[str],
    out,
    tok: ChatTokenizer,
    tokenizer_name: str,
    seq_len: int = 512,
    val_frac: float = 0.05,
    test_frac: float = 0.05,
    seed: int = 0,
    min_tokens: int = 32,
    min_chars: int = 200,
    progress: bool = True,
    near_duplicate: float = 0.3,
) -> dict:
    """Read, clean, tokenise and split ``inputs`` into ``out`` (one atomic write per file).
    ``near_duplicate`` > 1 keeps every document."""
    files = collect_files(inputs, say_skipped=False)  # the command said it when it checked its inputs
    docs: list[tuple[str, str]] = []
    skipped = 0
    for f in tqdm(files, desc="read", unit="file", disable=not progress):
        text = read_document(f)
        if len(text) < min_chars:
            skipped += 1
            continue
        docs.append((str(f), text))
    duplicates = []
    if near_duplicate <= 1:
        docs, duplicates = drop_near_duplicates(docs, near_duplicate)
    split_sizes(len(docs), val_frac, test_frac, f"--inputs documents of {min_chars}+ characters")  # enough?
    random.Random(seed).shuffle(docs)
    chunks: dict[str, list[Chunk]] = {s: [] for s in SPLITS}
    head = [tok.bos_id] if tok.bos_id is not None else []
    for i, (source, text) in enumerate(tqdm(docs, desc="tokenise", unit="doc", disable=not progress)):
        split = split_of(i, len(docs), val_frac, test_frac)
        for k, window in enumerate(chunk_document(head + tok.encode_text(text) + [tok.end_id], seq_len, min_tokens)):
            chunks[split].append(Chunk(f"{split}-{i:06d}-{k:04d}", source, window))
    for split in SPLITS:
        if not chunks[split] and (split == "train" or (val_frac if split == "val" else test_frac)):
            raise MmmambaError(
                f"--inputs: the {split} split got no chunk of {min_tokens}+ tokens; add text or lower --min-tokens"
            )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        lines = [
            json.dumps({"id": c.id, "source": c.source, "text": tok.decode(c.input_ids), "input_ids": c.input_ids})
            for c in chunks[split]
        ]
        write_text_atomic(out / f"{split}.jsonl", "".join(line + "\n" for line in lines))
    info = {
        "format": "mmmamba-text-corpus",
        "tokenizer": str(tokenizer_name),
        "vocab_size": getattr(tok, "vocab_size", None),
        "seq_len": seq_len,
        "min_tokens": min_tokens,
        "seed": seed,
        "splits": {s: {"chunks": len(c), "tokens": sum(len(x.input_ids) for x in c)} for s, c in chunks.items()},
        "documents": len(docs),
        "skipped_short_files": skipped,
        "near_duplicate_threshold": near_duplicate,
        "dropped_near_duplicates": duplicates,
        "sources": sorted(s for s, _ in docs),
    }
    write_json_atomic(out / "corpus.json", info)
    return info


CORPUS_FORMAT = "mmmamba-text-corpus"


def corpus_info(data_dir) -> dict:
    """``corpus.json`` of a text corpus, with the fields readers rely on checked."""
    path = Path(data_dir) / "corpus.json"
    info = read_json(path, "text-corpus file")
    if not isinstance(info, dict) or info.get("format") != CORPUS_FORMAT:
        raise MmmambaError(
            f"{path}: not a text corpus's corpus.json (format {CORPUS_FORMAT!r}); rebuild the corpus "
            "with `mmmamba data text`"
        )
    for key in ("vocab_size", "seq_len"):
        v = info.get(key)
        if v is not None and (type(v) is not int or v < 1):
            raise MmmambaError(f"{path}: {key} {v!r} is not a whole number >= 1; rebuild the corpus")
    return info


def check_corpus_vocab(data_dir, tok, model_vocab: int, flag: str = "--data") -> None:
    """A corpus built with another tokenizer is refused: its ids would be read as other tokens. ``corpus.json``
    records the vocabulary size of the tokenizer it was built with (``data text``) or of the teacher that
    wrote it (``data teacher-text``)."""
    recorded = corpus_info(data_dir).get("vocab_size")
    ours = {model_vocab, getattr(tok, "vocab_size", model_vocab)}
    if recorded is not None and recorded not in ours:
        raise MmmambaError(
            f"{flag} {data_dir}: built with a tokenizer of {recorded} tokens, but the model's has "
            f"{' / '.join(str(v) for v in sorted(ours))}; rebuild the corpus with --tokenizer set to the model"
        )


def read_text_split(data_dir, split: str, vocab_size: int | None = None) -> list[list[int]]:
    """``{data_dir}/{split}.jsonl`` of a text corpus → token windows; each line checked (``file:line``)."""
    corpus_info(data_dir)
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.exists():
        raise MmmambaError(f"{path}: no such text-corpus split; build it with `mmmamba data text`")
    check_regular(path, "text-corpus split")
    out = []
    for where, rec in iter_jsonl(path):
        ids = rec.get("input_ids") if isinstance(rec, dict) else None
        if not isinstance(ids, list) or len(ids) < 2 or not all(type(i) is int and i >= 0 for i in ids):
            raise MmmambaError(f"{where}: 'input_ids' must be a list of 2 or more token ids (one to predict from)")
        if vocab_size is not None and max(ids) >= vocab_size:
            raise MmmambaError(f"{where}: token id {max(ids)} outside the model's vocabulary of {vocab_size}")
        out.append(ids)
    if not out:
        raise MmmambaError(f"{path}: holds no chunks; the {split} split must not be empty")
    return out


def is_text_corpus(data_dir) -> bool:
    """A folder written by ``mmmamba data text`` (it has ``corpus.json``)."""
    return (Path(data_dir) / "corpus.json").is_file()


def text_examples(data_dir, split: str, vocab_size: int, max_length: int, limit: int | None = None) -> list[Example]:
    """A text-corpus split as training examples: every token a target (stages 1–3 need no answers)."""
    windows = read_text_split(data_dir, split, vocab_size)[:limit]
    for n, ids in enumerate(windows, 1):
        if len(ids) > max_length:
            raise MmmambaError(
                f"{Path(data_dir) / split}.jsonl: chunk {n} has {len(ids)} tokens, more than the model's "
                f"max_position {max_length}; rebuild the corpus with a smaller --seq-len"
            )
    return [Example(ids, [True] * len(ids), None) for ids in windows]
