"""Offline real-data builders (text corpus, teacher-answered chat set) and free-form evaluation."""

import json

import pytest

from mmmamba.cli.main import main
from mmmamba.data.conversations import read_split
from mmmamba.data.text_corpus import html_to_text, markdown_to_text, read_text_split
from mmmamba.data.tokenizer import ByteTokenizer, load_tokenizer
from mmmamba.errors import MmmambaError
from mmmamba.evaluation.freeform import agreement, normalize, reference_scores, token_f1

HTML = """<html><head><title>T</title><style>p {}</style><script>var x = 1;</script></head><body>
<nav role="navigation"><a href="/">Home</a> | <a href="/x">Index</a></nav>
<div class="body" role="main"><h1>Control Flow<a class="headerlink" href="#c">¶</a></h1>
<p>The <code>if</code> statement &amp; friends.<br>Second line.</p>
<div><p>Nested <b>paragraph</b>.</div>
<pre>for x in y:
    print(x)</pre>
</div><div class="footer">Copyright</div></body></html>"""


def test_html_keeps_main_content_only():
    text = html_to_text(HTML)
    assert text.startswith("Control Flow\n")
    assert "The if statement & friends.\nSecond line." in text
    assert "Nested paragraph." in text and "    print(x)" in text
    for gone in ("Home", "Index", "var x", "p {}", "Copyright", "¶", "T\n"):
        assert gone not in text


def test_markdown_loses_markup():
    text = markdown_to_text("# Title\n\nSee [the docs](http://x) and ![img](a.png) **now** `code`.\n\n\n\nEnd")
    assert text == "Title\n\nSee the docs and img now code.\n\nEnd"


def write_docs(folder, n=6):
    folder.mkdir()
    for i in range(n):
        body = " ".join(f"Sentence {j} of document {i} about loops and lists." for j in range(20))
        (folder / f"d{i}.md").write_text(f"# Doc {i}\n\n{body}\n")
    (folder / "page.html").write_text(HTML.replace("Second line.", "Second line. " + "More words here. " * 20))
    (folder / "skip.bin").write_bytes(b"\x00\xff")


def test_data_text_builds_documented_splits(tmp_path, capsys):
    write_docs(tmp_path / "docs")
    (tmp_path / "tok").mkdir()
    ByteTokenizer().save(tmp_path / "tok")
    out = tmp_path / "corpus"
    args = ["data", "text", "--inputs", str(tmp_path / "docs"), "--out", str(out), "--tokenizer", str(tmp_path / "tok")]
    assert main([*args, "--seq-len", "128", "--val-frac", "0.2", "--test-frac", "0.2"]) == 0
    info = json.loads((out / "corpus.json").read_text())
    assert info["documents"] == 7 and info["seq_len"] == 128 and info["format"] == "mmmamba-text-corpus"
    tok = ByteTokenizer()
    sources = {}
    for split in ("train", "val", "test"):
        chunks = read_text_split(out, split, tok.vocab_size)
        assert chunks and all(len(c) <= 128 for c in chunks)
        records = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        assert [r["input_ids"] for r in records] == chunks
        assert all(tok.decode(r["input_ids"]) == r["text"] for r in records)
        sources[split] = {r["source"] for r in records}
    assert not (sources["train"] & sources["val"]) and not (sources["train"] & sources["test"])  # split by document
    # one document rebuilt from its windows: bos + text + end
    first = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    doc = [r for r in first if r["source"] == first[0]["source"]]
    ids = [i for r in doc for i in r["input_ids"]]
    assert ids[0] == tok.bos_id and ids[-1] == tok.end_id
    # bad inputs: one line, exit 2, nothing written
    capsys.readouterr()
    for bad in (["--inputs", str(tmp_path / "nope")], ["--inputs", str(tmp_path / "docs" / "skip.bin")]):
        assert main(["data", "text", *bad, "--out", str(tmp_path / "o"), "--tokenizer", str(tmp_path / "tok")]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 100)
    assert main(["data", "text", "--inputs", str(tmp_path / "latin1.txt"), "--out", str(tmp_path / "o"),
                 "--tokenizer", str(tmp_path / "tok")]) == 2  # fmt: skip
    assert "not UTF-8" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_freeform_metrics():
    assert normalize("The  Cat, sat!") == "cat sat"
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    r = reference_scores({"a": "Paris.", "b": "no"}, {"a": "paris", "b": "yes", "c": "x"})
    assert r["exact_match"] == 0 and r["normalized_exact_match"] == pytest.approx(1 / 3) and r["n"] == 3
    t = {"a": [1, 2, 3, 9], "b": [4, 5, 9]}
    s = {"a": [1, 2, 3, 9], "b": [4, 6, 5, 9]}
    a = agreement(s, t, first_n=3)
    assert a["full_answer_match"] == 0.5
    assert a["first_n_token_agreement"] == pytest.approx((3 + 1) / 6)
    assert a["first_n_prefix"] == pytest.approx((1 + 1 / 3) / 2)


@pytest.fixture
def gguf_teacher(tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    from tests.formats.gguf_files import hf_llama, write_gguf

    write_gguf(tmp_path / "t.gguf", hf_llama())
    assert main(["import", "gguf", str(tmp_path / "t.gguf"), "--out", str(tmp_path / "teacher")]) == 0
    return tmp_path / "teacher"


def test_self_distill_writes_chat_jsonl_and_drops_unfinished(tmp_path, gguf_teacher, monkeypatch, capsys):
    import importlib

    generation = importlib.import_module("mmmamba.infer.generate")  # the module (the package exports a function)
    tok = load_tokenizer(gguf_teacher)
    stop = tok.stop_ids[0]
    prompts = [f"question number {i}" + " please" * (i % 3) for i in range(12)]  # lengths of both parities
    (tmp_path / "p.txt").write_text("\n".join(prompts + prompts[:2]) + "\n\n")  # duplicates and blanks ignored
    real = generation.generate
    batches = []

    def fake(model, batch, pixels, n, sampling, stop_ids, pad_id):
        batches.append(len(batch))
        got = real(model, batch, pixels, 2, sampling, stop_ids, pad_id)  # the real thing runs (left padding)
        assert all(len(g) == 2 for g in got)
        # answers: prompt length parity decides a complete one vs one that hit the cap; one empty
        return [[stop] if len(p) == min(map(len, batch)) and i == 0 else
                (tok.encode_text(" an answer") + [stop] if len(p) % 2 == 0 else tok.encode_text(" cut off"))
                for i, p in enumerate(batch)]  # fmt: skip

    monkeypatch.setattr(generation, "generate", fake)
    out = tmp_path / "chat"
    args = ["data", "self-distill", "--teacher", str(gguf_teacher), "--prompts", str(tmp_path / "p.txt")]
    opts = ["--batch-size", "5", "--device", "cpu", "--test-frac", "0.25", "--max-new-tokens", "16"]
    assert main([*args, "--out", str(out), *opts]) == 0
    assert batches == [5, 5, 2]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["prompts"] == 12 and meta["kept"] + meta["dropped_unfinished"] + meta["dropped_empty"] == 12
    assert meta["dropped_empty"] >= 1 and meta["dropped_unfinished"] >= 1
    kept = [s for split in ("train", "val", "test") if meta["splits"][split] for s in read_split(out, split)]
    assert len(kept) == meta["kept"] and all(s.turns[0][1] == "an answer" for s in kept)
    assert {s.turns[0][0] for s in kept} <= set(prompts)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"nope": 1}\n')
    assert main([*args[:4], "--prompts", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    # --cut-to-train: the cut answers join the train split only (marked), val/test stay complete answers
    cut_out = tmp_path / "chat_cut"
    assert main([*args, "--out", str(cut_out), *opts, "--cut-to-train"]) == 0
    meta2 = json.loads((cut_out / "meta.json").read_text())
    assert meta2["cut_kept_in_train"] == meta["dropped_unfinished"] and meta2["dropped_unfinished"] == 0
    assert meta2["splits"]["test"] == meta["splits"]["test"]
    assert meta2["splits"]["train"] == meta["splits"]["train"] + meta["dropped_unfinished"]
    train = [json.loads(line) for line in (cut_out / "train.jsonl").read_text().splitlines()]
    assert (
        sorted(r["conversations"][1]["value"] for r in train if r.get("cut"))
        == ["cut off"] * meta2["cut_kept_in_train"]
    )
    assert all(r["conversations"][1]["value"] == "an answer" for r in train if not r.get("cut"))
    assert len(read_split(cut_out, "train")) == len(train)  # the distillation reader takes the marked records
    held_out = [s for split in ("val", "test") if meta2["splits"][split] for s in read_split(cut_out, split)]
    assert all(s.turns[0][1] == "an answer" for s in held_out)


def test_eval_free_form_and_agreement(tmp_path, gguf_teacher, capsys):
    data = tmp_path / "chat"
    data.mkdir()
    rows = [{"id": f"t{i}", "conversations": [{"from": "human", "value": f"say thing {i}"},
                                              {"from": "gpt", "value": "the hat is here " * (1 + i)}]}
            for i in range(4)]  # fmt: skip
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["convert", "--teacher", str(gguf_teacher), "--out", str(tmp_path / "student")]) == 0
    report = tmp_path / "r.json"
    args = ["eval", "--data", str(data), "--teacher", str(gguf_teacher), "--device", "cpu", "--json", str(report)]
    assert main([*args, "--model", str(gguf_teacher)]) == 0
    r = json.loads(report.read_text())
    tok = load_tokenizer(gguf_teacher)
    assert r["max_new_tokens"] == len(tok.answer(rows[-1]["conversations"][1]["value"])) + 4
    assert r["free_form"]["agreement"]["full_answer_match"] == 1.0  # the teacher agrees with itself
    assert r["free_form"]["agreement"]["first_n_token_agreement"] == 1.0
    assert set(r["free_form"]["reference"]) == {"exact_match", "normalized_exact_match", "token_f1", "n"}
    assert main([*args, "--model", str(tmp_path / "student"), "--max-new-tokens", "5", "--agreement-tokens", "3"]) == 0
    r = json.loads(report.read_text())
    assert r["max_new_tokens"] == 5 and r["free_form"]["agreement"]["first_n"] == 3
    assert 0.0 <= r["free_form"]["agreement"]["first_n_token_agreement"] <= 1.0
    assert "vs teacher (greedy)" in capsys.readouterr().out


def test_distill_reads_a_text_corpus(tmp_path, capsys):
    """`mmmamba data text` output is distillation data: every token a target, no answers needed."""
    write_docs(tmp_path / "docs")
    out = tmp_path / "corpus"
    args = ["--inputs", str(tmp_path / "docs"), "--out", str(out), "--tokenizer", "models/tiny-teacher"]
    assert main(["data", "text", *args, "--seq-len", "64", "--val-frac", "0.2", "--test-frac", "0.2"]) == 0
    student, run = tmp_path / "student", tmp_path / "run"
    assert main(["convert", "--teacher", "models/tiny-teacher", "--keep-attention", "none", "--out", str(student)]) == 0
    common = ["--teacher", "models/tiny-teacher", "--student", str(student), "--data", str(out), "--out", str(run)]
    steps = ["--stages", "1,3", "--steps-per-stage", "2", "--batch-size", "2", "--checkpoint-activations"]
    assert main(["distill", *common, *steps]) == 0
    assert (run / "after_stage3" / "config.json").is_file()
    rows = (run / "log.csv").read_text().splitlines()[1:]
    assert rows and all("nan" not in r for r in rows)
    from mmmamba.data.text_corpus import text_examples
    from mmmamba.errors import MmmambaError

    with pytest.raises(MmmambaError, match="max_position"):
        text_examples(out, "train", 264, max_length=10)


def test_eval_on_a_text_corpus_reports_perplexity_kl_and_choices(tmp_path, gguf_teacher, capsys):
    write_docs(tmp_path / "docs", n=8)
    corpus = tmp_path / "corpus"
    build = ["data", "text", "--inputs", str(tmp_path / "docs"), "--out", str(corpus), "--tokenizer", str(gguf_teacher)]
    assert main([*build, "--seq-len", "64", "--val-frac", "0.25", "--test-frac", "0.25"]) == 0
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"context": "Loops and", "choices": ["lists.", "zebra quantum"], "label": 0}) + "\n")
    report = tmp_path / "text.json"
    args = ["eval", "--model", str(gguf_teacher), "--data", str(corpus), "--teacher", str(gguf_teacher)]
    assert main([*args, "--device", "cpu", "--choices", str(mc), "--cloze-items", "5", "--json", str(report)]) == 0
    got = json.loads(report.read_text())
    text = got["text"]
    assert text["tokens"] > 0 and text["perplexity"] > 1
    assert text["kl_teacher_model"] == pytest.approx(0, abs=1e-6)  # the model is its own teacher
    assert text["teacher_perplexity"] == pytest.approx(text["perplexity"])
    assert got["choices"]["mc"]["model"]["n"] == 1 and "perplexity" in capsys.readouterr().out
    assert main([*args, "--choices", str(tmp_path / "missing.jsonl")]) == 2  # named, before any work


def test_near_duplicate_documents_are_dropped_before_the_split(tmp_path):
    """The same page as HTML and as its Markdown source is one document: kept once (the HTML), so held-out
    text never reappears in training; distinct documents sharing boilerplate phrases are all kept."""
    from mmmamba.data.text_corpus import build_text_corpus

    docs = tmp_path / "docs"
    docs.mkdir()
    topics = ["rivers", "engines", "gardens", "violins", "glaciers", "printing"]
    for i, topic in enumerate(topics):
        words = " ".join(f"{topic} fact {k}: the {topic} {k * 7 + i} differ in colour size and age." for k in range(30))
        (docs / f"{topic}.md").write_text(f"# {topic}\n\nCopyright notice shared by all pages.\n\n{words}\n")
    source = (docs / "rivers.md").read_text()
    html = "<html><body><main><h1>rivers</h1><p>" + source.split("\n\n", 1)[1].replace("\n\n", "</p><p>") + "</main>"
    (docs / "rivers.html").write_text(html)  # the same page rendered
    (docs / "copy").mkdir()
    (docs / "copy" / "engines.txt").write_text(source.replace("rivers", "rivers!").replace("fact 3", "fact  3"))
    info = build_text_corpus([str(docs)], tmp_path / "c", ByteTokenizer(), "byte", 256, 0.2, 0.2)
    dropped = {tuple(p.rsplit("/", 1)[-1] for p in pair) for pair in info["dropped_near_duplicates"]}
    assert dropped == {("rivers.md", "rivers.html"), ("engines.txt", "rivers.html")}
    assert info["documents"] == 6
    kept = [s.rsplit("/", 1)[-1] for s in info["sources"]]
    assert "rivers.html" in kept and "rivers.md" not in kept and "engines.md" in kept
    keep_all = dict(near_duplicate=2)  # above 1: every document kept
    everything = build_text_corpus([str(docs)], tmp_path / "all", ByteTokenizer(), "byte", 256, 0.2, 0.2, **keep_all)
    assert everything["documents"] == 8 and everything["dropped_near_duplicates"] == []


def test_distill_pools_several_data_folders(tmp_path, capsys):
    """`distill --data A B` trains on the union of the folders' train samples (and validates on both)."""
    corpora = []
    for name, n in (("a", 6), ("b", 9)):
        write_docs(tmp_path / f"docs_{name}", n=n)
        out = tmp_path / f"corpus_{name}"
        args = ["--inputs", str(tmp_path / f"docs_{name}"), "--out", str(out), "--tokenizer", "models/tiny-teacher"]
        assert main(["data", "text", *args, "--seq-len", "64", "--val-frac", "0.2", "--test-frac", "0.2"]) == 0
        corpora.append(out)
    counts = [len(read_text_split(c, s)) for c in corpora for s in ("train", "val")]
    student = tmp_path / "student"
    assert main(["convert", "--teacher", "models/tiny-teacher", "--keep-attention", "none", "--out", str(student)]) == 0
    capsys.readouterr()
    common = ["distill", "--teacher", "models/tiny-teacher", "--student", str(student), "--out", str(tmp_path / "r")]
    assert main([*common, "--data", *map(str, corpora), "--batch-size", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{counts[0] + counts[2]} train / {counts[1] + counts[3]} val samples" in out
    assert main([*common, "--data", str(corpora[0]), str(tmp_path / "missing"), "--batch-size", "2"]) == 2
    assert "missing" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main([*common, "--data", str(corpora[0]), str(corpora[0]) + "/", "--batch-size", "2"]) == 2
    assert "given twice" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_split_sizes_give_every_split_asked_for_an_item_and_refuse_too_few():
    from mmmamba.data.text_corpus import split_sizes

    assert split_sizes(1000, 0.05, 0.05, "documents") == (50, 50)  # large sets: the plain rounded fractions
    assert split_sizes(20, 0.03, 0.05, "answered prompts") == (1, 1)  # 0.6 and 1.0 → one each, not 0
    assert split_sizes(5, 0, 0.1, "documents") == (0, 1)
    assert split_sizes(4, 0.45, 0.45, "documents") == (1, 2)  # train keeps one
    with pytest.raises(MmmambaError, match="2 answered prompts: too few for train, val, test"):
        split_sizes(2, 0.1, 0.1, "answered prompts")
    assert split_sizes(1, 0, 0, "documents") == (0, 0)


def test_entries_of_a_folder_that_are_not_files_are_skipped_and_said_once(tmp_path, capsys):
    import os

    from mmmamba.data.text_corpus import collect_files

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("text")
    (tmp_path / "d" / "b.html").symlink_to(tmp_path / "nowhere.html")
    os.mkfifo(tmp_path / "d" / "c.md")
    assert collect_files([str(tmp_path / "d")]) == [tmp_path / "d" / "a.txt"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipped 2 entries that are not regular files" in err
    assert collect_files([str(tmp_path / "d")], say_skipped=False) == [tmp_path / "d" / "a.txt"]
    assert capsys.readouterr().err == ""


def test_data_text_writes_the_corpus_whole(tmp_path, monkeypatch, capsys):
    """A kill while the corpus is written leaves no half-made folder, and a folder another process filled
    meanwhile is kept as that process left it (the finished corpus is renamed in only onto nothing)."""
    import mmmamba.data.text_corpus as text_corpus

    write_docs(tmp_path / "docs")
    (tmp_path / "tok").mkdir()
    ByteTokenizer().save(tmp_path / "tok")
    out = tmp_path / "runs" / "corpus"
    args = ["data", "text", "--inputs", str(tmp_path / "docs"), "--out", str(out), "--tokenizer", str(tmp_path / "tok")]
    real = text_corpus.build_text_corpus

    def killed(inputs, folder, *a, **k):
        real(inputs, folder, *a, **k)
        raise KeyboardInterrupt  # after every file is written, before the rename

    monkeypatch.setattr(text_corpus, "build_text_corpus", killed)
    assert main([*args, "--seq-len", "128"]) == 130  # stopped as Ctrl-C stops it
    assert list((tmp_path / "runs").iterdir()) == []  # no corpus, and no temporary left beside it

    def raced(inputs, folder, *a, **k):
        out.mkdir()
        (out / "theirs.txt").write_text("another writer's file")
        return real(inputs, folder, *a, **k)

    monkeypatch.setattr(text_corpus, "build_text_corpus", raced)
    assert main([*args, "--seq-len", "128"]) == 2
    assert "another process wrote this folder" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["corpus"]
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
