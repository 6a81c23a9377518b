"""English prose from Debian documentation packages → one pooled, near-duplicate-filtered text corpus.

    python recipes/debian_docs.py --work runs/debdocs --tokenizer runs/smol/teacher \
        [--packages python3.11-doc postgresql-doc-15 ...] [--count-only]

Runs on any Debian 12 machine that reaches Debian's archive (``apt-get download``: no root, nothing
installed). Steps, each skipped when its output exists: download the .deb files into WORK/debs,
unpack them (``dpkg-deb -x``) into WORK/x/PACKAGE, count each package's English documents (after the
near-duplicate filter within the package: words, and tokens under --tokenizer), write the table to
WORK/packages.json, then build WORK/corpus with ``mmmamba data text`` over every package's folders
at once, so that the near-duplicate filter also runs across packages. Without --tokenizer the
token counts are estimated as words × --tokens-per-word. The default set, 38 packages, counts 37.4 M
SmolLM2 tokens (the Linux kernel's documentation alone 8.8 M); its corpus, after the cross-package
filter, holds 37.4 M as well (train 33.6 M, val 1.7 M, test 2.0 M at --seq-len 512).

Folders are listed per package (below): only the English prose a package holds (HTML / text /
Markdown), never its translations or its generated API indexes; where a package has its manuals
both as one page and split into pages, only one of the two. An entry may be a glob pattern, whose
matches are taken less the names in SKIP (translations, Sphinx's page sources and static files,
indexes) and less files that are not UTF-8 (which ``mmmamba data text`` refuses). Packages whose
docs are in formats the corpus reader does not take (perl-doc's POD, glibc-doc's info, ruby's ri,
openjdk's generated javadoc) or partly in Latin-1 (abs-guide: 24 of its 117 pages) are left out.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

from mmmamba.data.text_corpus import SUFFIXES, collect_files, drop_near_duplicates, read_document
from mmmamba.io import write_json_atomic

# package → its English documentation inside the unpacked package: folders or single files, or glob
# patterns whose matches (folders, and files the corpus reader takes) count less the names in SKIP
FOLDERS = {
    "python3.11-doc": ["usr/share/doc/python3.11/html"],
    "postgresql-doc-15": ["usr/share/doc/postgresql-doc-15/html"],
    "python-django-doc": ["usr/share/doc/python-django-doc/html"],
    "sqlite3-doc": ["usr/share/doc/sqlite3"],
    "git-doc": ["usr/share/doc/git-doc"],
    "cmake-doc": ["usr/share/doc/cmake-data/html"],
    "nodejs-doc": ["usr/share/doc/nodejs/api"],
    "debian-reference-en": ["usr/share/debian-reference"],
    "gnucash-docs": ["usr/share/doc/gnucash-docs/gnucash-guide-en", "usr/share/doc/gnucash-docs/gnucash-help-en"],
    "rust-doc": [  # the books, not the generated std/core API pages
        f"usr/share/doc/rust-doc/html/{b}"
        for b in (
            "book",
            "reference",
            "nomicon",
            "edition-guide",
            "embedded-book",
            "rust-by-example",
            "rustc",
            "rustdoc",
            "unstable-book",
        )
    ],  # fmt: skip
    "linux-doc-6.1": ["usr/share/doc/linux-doc-6.1/html/*"],  # the kernel's Documentation/, as HTML
    "debian-handbook": ["usr/share/doc/debian-handbook/html/en-US"],
    "vim-doc": ["usr/share/doc/vim/html/*"],  # less digraph.html, the digraph table in Latin-1
    "python-pandas-doc": [  # not the generated API reference (reference/, generated/)
        f"usr/share/doc/python-pandas-doc/html/{d}"
        for d in ("user_guide", "getting_started", "development", "whatsnew")
    ],
    "python-scipy-doc": ["usr/share/doc/python-scipy-doc/html/tutorial", "usr/share/doc/python-scipy-doc/html/dev"],
    "lilypond-doc-html": [  # each manual as one page: the split pages repeat the manual's contents on every page
        f"usr/share/doc/lilypond/html/Documentation/{m}-big-page.html"
        for m in ("learning", "notation", "usage", "extending", "essay", "changes", "contributor", "web")
    ],
    "apache2-doc": ["usr/share/doc/apache2-doc/manual/en"],
    "gimp-help-en": ["usr/share/gimp/2.0/help/en"],
    "bash-doc": ["usr/share/doc/bash/bashref.html"],
    "mercurial-common": ["usr/lib/python3/dist-packages/mercurial/helptext"],
    "haskell98-report": ["usr/share/doc/haskell98-report/html/haskell98-report-html"],
    "sphinx-doc": ["usr/share/doc/sphinx-doc/html/*"],
    "python-sqlalchemy-doc": ["usr/share/doc/python-sqlalchemy-doc/html/*"],
    "racket-doc": [  # the guides and manuals, not every library's reference
        f"usr/share/doc/racket/{b}"
        for b in (
            "guide reference quick more continue style getting-started scribble foreign inside raco pkg drracket"
        ).split()
    ],
    "erlang-doc": [  # the system documentation, not each application's module reference
        f"usr/share/doc/erlang-doc/doc/{b}"
        for b in (
            "design_principles efficiency_guide embedded getting_started installation_guide oam programming_examples "
            "reference_manual system_architecture_intro system_principles tutorial"
        ).split()
    ],
    "ghc-doc": ["usr/share/doc/ghc-doc/html/users_guide/*", "usr/share/doc/ghc-doc/html/haddock/*"],
    "octave-doc": ["usr/share/doc/octave/octave.html/*"],
    "libreoffice-help-en-us": ["usr/share/libreoffice/help/en-US/text"],
    "zsh-doc": ["usr/share/doc/zsh-common/html/*"],
    "postfix-doc": ["usr/share/doc/postfix/html"],
    "debian-policy": [  # each smaller policy as its one page, not also its split pages
        f"usr/share/doc/debian-policy/{f}"
        for f in (
            "policy.html/* perl-policy-1.html menu-policy-1.html autopkgtest.html copyright-format-1.0.html "
            "debconf_specification.html"
        ).split()
    ],
    "developers-reference": ["usr/share/developers-reference/developers-reference.html"],  # the one-page edition
    "wireshark-doc": ["usr/share/doc/wireshark/wsug_html_chunked", "usr/share/doc/wireshark/wsdg_html_chunked"],
    "kicad-doc-en": ["usr/share/doc/kicad/help/en"],
    "maxima-doc": ["usr/share/doc/maxima-doc/html/maxima_singlepage.html"],  # not also its split pages
    "gnuplot-doc": ["usr/share/doc/gnuplot/htmldocs"],
    "harden-doc": ["usr/share/doc/harden-doc/html/en-US"],
    "python-biopython-doc": ["usr/share/doc/python-biopython-doc/Doc/Tutorial.html"],  # not the API pages
}
# names (glob patterns) left out where a FOLDERS pattern matches them: translations, Sphinx's page
# sources, build caches, highlighted source code and static files, the generated indexes, license texts
SKIP = {".*", "translations", "_sources", "_modules", "_static", "_images", "_downloads"}
SKIP |= {"genindex.html", "py-modindex.html", "search.html", "*-Index.html", "copyright.html"}


def run(cmd: list[str], cwd=None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=cwd)


def fetch(work: Path, packages: list[str]) -> dict[str, list[Path]]:
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        run(["apt-get", "download", *missing], cwd=debs)
    folders = {}
    for p in packages:
        root = work / "x" / p
        if not root.is_dir():
            (deb,) = debs.glob(f"{p}_*.deb")
            tmp = root.with_name(root.name + ".tmp")
            tmp.mkdir(parents=True, exist_ok=True)
            run(["dpkg-deb", "-x", str(deb), str(tmp)])
            tmp.rename(root)
        folders[p] = [f for entry in FOLDERS[p] for f in expand(root, entry)]
    return folders


def expand(root: Path, entry: str) -> list[Path]:
    """A FOLDERS entry → what it names under ``root`` that exists (a glob pattern: its matches, sorted)."""
    if not any(c in entry for c in "*?["):
        return [root / entry] if (root / entry).exists() else []
    found = sorted(root.glob(entry))
    found = [f for f in found if not any(fnmatch(f.name, pattern) for pattern in SKIP)]
    return [f for f in found if f.is_dir() or readable(f)]


def readable(f: Path) -> bool:
    """A file the corpus reader takes: a kind it reads, in UTF-8 (``mmmamba data text`` stops at any other)."""
    if f.suffix.lower() not in SUFFIXES:
        return False
    try:
        f.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def count(folders: list[Path], tok, tokens_per_word: float, threshold: float) -> dict:
    docs = []
    for f in collect_files([str(d) for d in folders]):
        try:
            text = read_document(f)
        except Exception as e:  # noqa: BLE001 - a file the reader refuses is counted and left out
            print(f"  skip {f}: {e}", file=sys.stderr)
            continue
        if len(text) >= 200:
            docs.append((str(f), text))
    kept, dropped = drop_near_duplicates(docs, threshold)
    words = sum(len(re.findall(r"\S+", t)) for _, t in kept)
    row = {"files": len(docs), "documents": len(kept), "near_duplicates": len(dropped), "words": words}
    if tok is not None:
        row["tokens"] = sum(len(tok.encode_text(t)) + 2 for _, t in kept)
    else:
        row["tokens_estimated"] = round(words * tokens_per_word)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="folder for the .deb files, unpacked packages, table and corpus")
    p.add_argument("--packages", nargs="+", default=list(FOLDERS), choices=list(FOLDERS))
    p.add_argument("--tokenizer", default=None, help="model folder whose tokenizer counts and builds the corpus")
    p.add_argument(
        "--tokens-per-word", type=float, default=2.0, help="estimate without --tokenizer (SmolLM2 on python3.11-doc)"
    )
    p.add_argument("--near-duplicate", type=float, default=0.3)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--count-only", action="store_true", help="write packages.json, build no corpus")
    args = p.parse_args()
    work = Path(args.work)
    folders = fetch(work, args.packages)
    tok = None
    if args.tokenizer:
        from mmmamba.data.tokenizer import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
    table_file = work / "packages.json"
    table = json.loads(table_file.read_text()) if table_file.exists() else {}
    for pkg in args.packages:
        named = [str(f.relative_to(work)) for f in folders[pkg]]
        if table.get(pkg, {}).get("folders") != named or (tok is not None and "tokens" not in table[pkg]):
            table[pkg] = {"folders": named}
            table[pkg] |= count(folders[pkg], tok, args.tokens_per_word, args.near_duplicate)
            write_json_atomic(table_file, table)
        print(f"{pkg:<22} {json.dumps({k: v for k, v in table[pkg].items() if k != 'folders'})}", flush=True)
    key = "tokens" if tok is not None else "tokens_estimated"
    print(f"all packages: {sum(table[p].get(key, 0) for p in args.packages):,} {key} (before cross-package filter)")
    if args.count_only:
        return
    if tok is None:
        raise SystemExit("--tokenizer: needed to build the corpus (or pass --count-only)")
    inputs = [str(f) for pkg in args.packages for f in folders[pkg]]
    cmd = [sys.executable, "-m", "mmmamba", "data", "text", "--inputs", *inputs, "--out", str(work / "corpus")]
    cmd += ["--tokenizer", args.tokenizer, "--seq-len", str(args.seq_len), "--near-duplicate", str(args.near_duplicate)]
    if not (work / "corpus" / "corpus.json").exists():
        run(cmd)


if __name__ == "__main__":
    main()
