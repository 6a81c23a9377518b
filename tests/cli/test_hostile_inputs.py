"""Hostile inputs (issue 32, classes 1, 2, 3 and 6): each is refused by the CLI in one line that names it,
with exit code 2, no traceback, quickly, and with every input and earlier output unchanged.

1. a model folder's chat template is untrusted code (errors, endless loops, huge strings);
2. numbers in files (GGUF metadata, config.json, train_state.pt, JSONL, result and speed files);
3. paths that leave the data folder through links, and files that are not regular files (FIFOs, devices);
6. text that is valid JSON but not UTF-8 (a lone surrogate), and undecodable bytes typed into chat.
"""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmmamba.cli.main import main
from mmmamba.convert import convert_to_mamba
from mmmamba.data.suite import make_suite
from mmmamba.data.tokenizer import ByteTokenizer
from mmmamba.formats import save_checkpoint
from mmmamba.models import Decoder, DecoderConfig, VisionConfig
from tests.formats.hf_folders import write_tokenizer

REPO = Path(__file__).resolve().parents[1]
LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
TEMPLATES = {
    "raise": "{{ raise_exception('this template refuses') }}",
    "syntax": "{% for m in messages %}{{ m.content ",
    "undefined": "{{ nowhere.to.be.found }}",
    "loop": LOOP,
    "big_string": "{{ 'x' * 10000000000 }}",
    "doubling": "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    "{{ ns.s }}",
    "big_output": "{% for i in range(100000) %}{{ 'y' * 100000 }}{% endfor %}",
    "escape": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "surrogate_out": "{{ '\\ud800' }}",
    "not_text": None,  # chat_template: 42 in tokenizer_config.json
}


def tiny(tok: ByteTokenizer, vision: bool = True) -> Decoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(
        tok.vocab_size, 32, 2, 4, 2, 8, 64, max_position=1024,
        vision=VisionConfig(32, 8, 3) if vision else None, image_token_id=tok.image_token_id if vision else None,
    )  # fmt: skip
    return Decoder(cfg)


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        h.update(str(f.relative_to(folder)).encode())
        if f.is_file() and not f.is_symlink():
            h.update(f.read_bytes())
    return h.hexdigest()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def put(folder: Path, records, name="val.jsonl") -> Path:
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def gguf_file(path: Path, **override) -> Path:
    """The tests' tiny Llama GGUF, with some metadata replaced: ``override`` maps a GGUFWriter ``add_*``
    method to a function (writer, arch) that writes the hostile value instead."""
    gguf = pytest.importorskip("gguf")
    from tests.formats.gguf_files import hf_llama, write_gguf

    saved = {name: getattr(gguf.GGUFWriter, name) for name in override}
    try:
        for name, fn in override.items():
            setattr(gguf.GGUFWriter, name, lambda self, *a, fn=fn, **k: fn(self, self.arch))
        write_gguf(path, hf_llama())
    finally:
        for name, fn in saved.items():
            setattr(gguf.GGUFWriter, name, fn)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    outside = tmp_path_factory.mktemp("outside")
    make_suite(root / "data", seed=1, sizes={"train": 4, "val": 1, "test": 1})
    tok = ByteTokenizer(image_tokens=16)
    teacher = tiny(tok)
    save_checkpoint(teacher, root / "teacher", extra=tok.save)
    save_checkpoint(convert_to_mamba(teacher, [1]), root / "student", extra=tok.save)
    save_checkpoint(tiny(tok, vision=False), root / "text_teacher", extra=tok.save)
    rec = json.loads(lines(root / "data" / "val.jsonl")[0])
    (outside / "secret.png").write_bytes((root / "data" / rec["image"]).read_bytes())
    (outside / "imgs").mkdir()
    (outside / "imgs" / "a.png").write_bytes((root / "data" / rec["image"]).read_bytes())
    base = json.loads((root / "teacher" / "config.json").read_text())
    bad = root / "bad"
    bad.mkdir()

    def data(name, records=None, raw=None, split="val.jsonl"):
        shutil.copytree(root / "data", bad / name)
        if raw is not None:
            (bad / name / split).write_bytes(raw)
        elif records is not None:
            put(bad / name, records, split)
        return bad / name

    # class 1: tokenizer folders with hostile chat templates
    for name, template in TEMPLATES.items():
        write_tokenizer(bad / f"tpl_{name}", chat_template=template or "{{ messages }}")
        if template is None:
            cfg = bad / f"tpl_{name}" / "tokenizer_config.json"
            cfg.write_text(json.dumps(json.loads(cfg.read_text()) | {"chat_template": 42}))
            (bad / f"tpl_{name}" / "chat_template.jinja").unlink(missing_ok=True)
    gguf_file(bad / "tpl_loop.gguf", add_chat_template=lambda w, a: w.add_string("tokenizer.chat_template", LOOP))
    (root / "doc.txt").write_text("Plain words for a corpus. " * 40)
    # class 2: GGUF metadata
    gguf_file(bad / "head0.gguf", add_head_count=lambda w, a: w.add_uint32(f"{a}.attention.head_count", 0))
    gguf_file(bad / "blocks_str.gguf", add_block_count=lambda w, a: w.add_string(f"{a}.block_count", "four"))
    gguf_file(bad / "blocks_1e6.gguf", add_block_count=lambda w, a: w.add_uint32(f"{a}.block_count", 10**6))
    gguf_file(bad / "blocks_9.gguf", add_block_count=lambda w, a: w.add_uint32(f"{a}.block_count", 9))
    gguf_file(bad / "rope_nan.gguf", add_rope_freq_base=lambda w, a: w.add_float32(f"{a}.rope.freq_base", math.nan))
    gguf_file(bad / "rope_0.gguf", add_rope_freq_base=lambda w, a: w.add_float32(f"{a}.rope.freq_base", 0.0))
    gguf_file(
        bad / "eps_neg.gguf",
        add_layer_norm_rms_eps=lambda w, a: w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", -1.0),
    )
    gguf_file(bad / "ctx_str.gguf", add_context_length=lambda w, a: w.add_string(f"{a}.context_length", "long"))
    gguf_file(bad / "hidden_bool.gguf", add_embedding_length=lambda w, a: w.add_bool(f"{a}.embedding_length", True))
    # class 2: config.json numbers
    for name, change in {
        "grid": {"vision": base["vision"] | {"image_size": 8192, "patch_size": 2}},
        "rope_nan": {"rope_theta": "NaN"},
        "eps_0": {"norm_eps": 0},
        "mean_nan": {"vision": base["vision"] | {"mean": [0.5, "x", 0.5]}},
        "ratio_tiny": {"vision": base["vision"] | {"style": "internvl", "downsample_ratio": 1e-300}},
        "image_id_bool": {"image_token_id": True},
    }.items():
        shutil.copytree(root / "teacher", bad / f"cfg_{name}")
        raw = (bad / f"cfg_{name}" / "config.json").read_text().replace('"rope_theta": 10000.0', '"rope_theta": 1e4')
        (bad / f"cfg_{name}" / "config.json").write_text(json.dumps(json.loads(raw) | change).replace('"NaN"', "NaN"))
    # class 2: Hugging Face config.json numbers (refused before any weight is read)
    llama = {"architectures": ["LlamaForCausalLM"], "vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64}  # fmt: skip
    for name, change in {
        "theta_str": {"rope_theta": "abc"},
        "eps_neg": {"rms_norm_eps": -1},
        "window_str": {"architectures": ["MistralForCausalLM"], "sliding_window": "wide"},
        "head_dim_float": {"head_dim": 8.5},
        "tie_str": {"max_position_embeddings": "long"},
    }.items():
        (bad / f"hf_{name}").mkdir()
        (bad / f"hf_{name}" / "config.json").write_text(json.dumps(llama | change))
    # class 2: training states in a distill run folder
    for name, step in {"str": "5", "neg": -5, "float": 2.5, "bool": True, "beyond": 10**9}.items():
        run = bad / f"state_{name}"
        run.mkdir()
        state = {"model": {}, "optimizer": {}, "step": step, "torch_rng": torch.get_rng_state(), "extra": {"stage": 1}}
        torch.save(state, run / "train_state.pt")
    run = bad / "state_counter"
    run.mkdir()
    torch.save({"model": {}, "optimizer": {}, "step": 1, "torch_rng": torch.get_rng_state(),
                "extra": {"stage": "one"}}, run / "train_state.pt")  # fmt: skip
    # class 2: a JSONL line past the cap (32 MB), reports and speed files with wrong types
    question = {"from": "human", "value": "<image>\n" + "x" * (33 << 20)}
    huge = rec | {"conversations": [question, rec["conversations"][1]]}
    data("long_line", [huge])
    ev = {"mean_accuracy": 0.5, "per_family": {"a": 0.5}, "n": 2}
    (root / "eval.json").write_text(json.dumps(ev))
    result = ev | {"name": "linear", "group": "headline"}
    (root / "result.json").write_text(json.dumps(result))
    for name, change in {
        "tokens_str": {"tokens": "many"},
        "steps_int": {"steps": 5},
        "seconds_nan": {"seconds": "NaN"},
        "acc_nan": {"mean_accuracy": "NaN"},
        "ppl_str": {"text": {"perplexity": "low"}},
    }.items():
        (bad / f"res_{name}.json").write_text(json.dumps(result | change).replace('"NaN"', "NaN"))
    row = {"model": "linear", "context": 1024, "prefill_s": 0.1, "decode_ms": 2.0, "floor_ms": 1.0}
    row |= {"tokens_per_s": 500.0, "cache_bytes": 1e6, "peak_gb": 1.0}
    speed = {"device": "H200", "bandwidth": 4e12, "rows": [row], "batch": []}
    (root / "speed.json").write_text(json.dumps(speed))
    for name, change in {
        "ctx_str": {"rows": [row | {"context": "long"}]},
        "ms_str": {"rows": [row | {"decode_ms": "fast"}]},
        "floor_0": {"rows": [row | {"floor_ms": 0}]},
        "rows_obj": {"rows": {"a": 1}},
        "bw_str": {"bandwidth": "a lot"},
        "batch_bad": {"batch": [{"model": "linear", "context": 8, "batch": "x", "step_ms": 1, "tokens_per_s": 1}]},
        "missing": {"rows": [{k: v for k, v in row.items() if k != "peak_gb"}]},
    }.items():
        (bad / f"speed_{name}.json").write_text(json.dumps(speed | change))
    # class 3: links that leave the data folder, and files that are not regular files
    d = data("link_file", [rec | {"image": "escape.png"}])
    os.symlink(outside / "secret.png", d / "escape.png")
    d = data("link_dir", [rec | {"image": "sub/a.png"}])
    os.symlink(outside / "imgs", d / "sub")
    d = data("fifo_img", [rec | {"image": "pipe.png"}])
    os.mkfifo(d / "pipe.png")
    d = data("fifo_val")
    (d / "val.jsonl").unlink()
    os.mkfifo(d / "val.jsonl")
    os.mkfifo(root / "pipe.txt")
    os.mkfifo(root / "pipe.png")
    os.mkfifo(root / "pipe.jsonl")
    os.mkfifo(root / "pipe.json")
    # class 6: lone surrogates in JSON text (valid JSON, not encodable)
    conv = rec["conversations"]
    lone = "\\ud800"
    raw = json.dumps(rec | {"conversations": [conv[0] | {"value": "<image>\nX"}, conv[1]]}).replace("X", lone)
    data("surrogate_question", raw=(raw + "\n").encode())
    raw = json.dumps(rec | {"conversations": [conv[0], conv[1] | {"value": "Y"}]}).replace("Y", "a" + lone)
    data("surrogate_answer", raw=(raw + "\n").encode())
    raw = json.dumps(rec | {"family": "Z"}).replace("Z", "\\udfff")
    data("surrogate_family", raw=(raw + "\n").encode())
    data("surrogate_train", raw=(raw + "\n").encode(), split="train.jsonl")
    (root / "choices_bad.jsonl").write_text('{"context": "a", "choices": ["b", "c\\ud800"], "label": 0}\n')
    (root / "prompts_bad.jsonl").write_text('{"prompt": "hello \\udc80 there"}\n')
    (root / "prompts.csv").write_text("prompt,id\nhello there,1\n")
    long_item = {"context": "word " * 5000, "choices": ["b", "c"], "label": 0}  # beyond any tiny model's context
    (root / "choices_long.jsonl").write_text(json.dumps({"context": "a", "choices": ["b", "c"], "label": 1}) + "\n"
                                             + json.dumps(long_item) + "\n")  # fmt: skip
    (root / "outside_digest").write_text(digest(outside))
    return root


W, B = "{W}", "{W}/bad"
GEN = ["generate", "--model", W + "/teacher", "--prompt", "hi"]
EVAL = ["eval", "--model", W + "/teacher", "--split", "val"]
DIST = ["distill", "--teacher", W + "/teacher", "--student", W + "/student", "--steps-per-stage", "1"]
TEXT = ["data", "text", "--inputs", W + "/doc.txt", "--out", W + "/new_corpus", "--tokenizer"]

CASES = {  # name: (argv, a word the message must hold: the input it names)
    # 1. chat templates
    **{f"template_{n}": (TEXT + [f"{B}/tpl_{n}"], f"tpl_{n}") for n in TEMPLATES},
    "template_gguf_loop": (TEXT + [B + "/tpl_loop.gguf"], "tpl_loop.gguf"),
    # 2. numbers in files
    "gguf_head_count_0": (["import", "gguf", B + "/head0.gguf", "--out", W + "/imp"], "head_count"),
    "gguf_block_count_str": (["import", "gguf", B + "/blocks_str.gguf", "--out", W + "/imp"], "block_count"),
    "gguf_block_count_1e6": (["import", "gguf", B + "/blocks_1e6.gguf", "--out", W + "/imp"], "block_count"),
    "gguf_block_count_9": (["import", "gguf", B + "/blocks_9.gguf", "--out", W + "/imp"], "block_count"),
    "gguf_rope_nan": (["import", "gguf", B + "/rope_nan.gguf", "--out", W + "/imp"], "freq_base"),
    "gguf_rope_0": (["import", "gguf", B + "/rope_0.gguf", "--out", W + "/imp"], "freq_base"),
    "gguf_eps_neg": (["import", "gguf", B + "/eps_neg.gguf", "--out", W + "/imp"], "epsilon"),
    "gguf_ctx_str": (["import", "gguf", B + "/ctx_str.gguf", "--out", W + "/imp"], "context_length"),
    "gguf_hidden_bool": (["import", "gguf", B + "/hidden_bool.gguf", "--out", W + "/imp"], "embedding_length"),
    "gguf_info_head0": (["info", "--model", B + "/head0.gguf"], "head0.gguf"),
    **{
        f"config_{n}": (["info", "--model", f"{B}/cfg_{n}"], f"cfg_{n}")
        for n in ("grid", "rope_nan", "eps_0", "mean_nan", "ratio_tiny", "image_id_bool")
    },
    **{
        f"hf_{n}": (["info", "--model", f"{B}/hf_{n}"], f"hf_{n}")
        for n in ("theta_str", "eps_neg", "window_str", "head_dim_float", "tie_str")
    },
    "graft_4096_1": (
        [
            "teacher",
            "graft",
            "--llm",
            W + "/text_teacher",
            "--out",
            W + "/vlm",
            "--image-size",
            "4096",
            "--patch-size",
            "1",
        ],
        "--image-size",
    ),  # fmt: skip
    **{
        f"state_{n}": (DIST + ["--data", W + "/data", "--out", f"{B}/state_{n}"], f"state_{n}")
        for n in ("str", "neg", "float", "bool", "beyond", "counter")
    },
    "jsonl_line_33mb": (EVAL + ["--data", B + "/long_line"], "val.jsonl:1"),
    **{
        f"report_{n}": (
            [
                "report",
                "--runs",
                f"{B}/res_{n}.json",
                "--teacher-eval",
                W + "/eval.json",
                "--out",
                W + "/R.md",
                "--chart",
                W + "/q.png",
                "--quality",
                W + "/q.json",
            ],
            f"res_{n}.json",
        )  # fmt: skip
        for n in ("tokens_str", "steps_int", "seconds_nan", "acc_nan", "ppl_str")
    },
    "bench_report_dev_zero": (["bench", "report", "--runs", "/dev/zero", "--out", W + "/sp"], "/dev/zero"),
    "bench_report_fifo": (["bench", "report", "--runs", W + "/pipe.json", "--out", W + "/sp"], "pipe.json"),
    **{
        f"bench_report_{n}": (["bench", "report", "--runs", f"{B}/speed_{n}.json", "--out", W + "/sp"], f"speed_{n}")
        for n in ("ctx_str", "ms_str", "floor_0", "rows_obj", "bw_str", "batch_bad", "missing")
    },
    # 3. paths
    "image_link_outside": (EVAL + ["--data", B + "/link_file"], "escape.png"),
    "image_subfolder_link_outside": (EVAL + ["--data", B + "/link_dir"], "sub/a.png"),
    "image_fifo": (EVAL + ["--data", B + "/fifo_img"], "pipe.png"),
    "data_split_fifo": (EVAL + ["--data", B + "/fifo_val"], "val.jsonl"),
    "data_text_fifo": (TEXT[:3] + [W + "/pipe.txt"] + TEXT[4:] + [W + "/teacher"], "pipe.txt"),
    "generate_image_fifo": (GEN + ["--image", W + "/pipe.png"], "pipe.png"),
    "prompts_fifo": (
        ["data", "self-distill", "--teacher", W + "/teacher", "--prompts", W + "/pipe.jsonl", "--out", W + "/sd"],
        "pipe.jsonl",
    ),
    "choices_fifo": (EVAL + ["--data", W + "/data", "--choices", W + "/pipe.jsonl"], "pipe.jsonl"),
    "prompts_csv": (
        ["data", "self-distill", "--teacher", W + "/teacher", "--prompts", W + "/prompts.csv", "--out", W + "/sd"],
        "prompts.csv",
    ),
    "prompts_image": (
        [
            "data",
            "teacher-text",
            "--teacher",
            W + "/text_teacher",
            "--prompts",
            W + "/data",
            "--out",
            W + "/tt",
            "--text-rows",
            "0",
            "--device",
            "cpu",
        ],
        "train.jsonl:1",
    ),  # fmt: skip
    "generate_empty_prompt": (GEN[:-1] + [" "], "--prompt"),
    "choices_too_long": (
        EVAL + ["--data", W + "/data", "--choices", W + "/choices_long.jsonl"],
        "choices_long.jsonl:2",
    ),
    "eval_json_dev_zero_teacher_eval": (
        [
            "report",
            "--runs",
            W + "/result.json",
            "--teacher-eval",
            "/dev/zero",
            "--out",
            W + "/R.md",
            "--chart",
            W + "/q.png",
            "--quality",
            W + "/q.json",
        ],
        "/dev/zero",
    ),  # fmt: skip
    # 6. text that is valid JSON but not encodable
    "surrogate_eval_question": (EVAL + ["--data", B + "/surrogate_question"], "val.jsonl:1"),
    "surrogate_eval_answer": (EVAL + ["--data", B + "/surrogate_answer"], "val.jsonl:1"),
    "surrogate_eval_family": (EVAL + ["--data", B + "/surrogate_family"], "val.jsonl:1"),
    "surrogate_distill": (DIST + ["--data", B + "/surrogate_train", "--out", W + "/run"], "train.jsonl:1"),
    "surrogate_choices": (EVAL + ["--data", W + "/data", "--choices", W + "/choices_bad.jsonl"], "choices_bad"),
    "surrogate_self_distill": (
        [
            "data",
            "self-distill",
            "--teacher",
            W + "/teacher",
            "--prompts",
            W + "/prompts_bad.jsonl",
            "--out",
            W + "/sd",
        ],
        "prompts_bad.jsonl:1",
    ),  # fmt: skip
    "surrogate_generate_prompt": (GEN[:-1] + ["hi \udcff there"], "--prompt"),
}


def test_every_class_has_several_cases():
    prefixes = ("template_", "gguf_", "config_", "hf_", "state_", "report_", "bench_report_", "image_", "surrogate_")
    for prefix in prefixes:
        assert sum(name.startswith(prefix) for name in CASES) >= 3, prefix


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_is_one_line_exit_2_and_changes_nothing(world, name, capsys):
    argv, names = CASES[name]
    argv = [a.replace(W, str(world)) for a in argv]
    before = digest(world)
    t0 = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err and "\n" not in err and "Traceback" not in err, err
    assert names in err, err
    assert elapsed < 30, f"{name} took {elapsed:.1f} s to refuse"
    assert digest(world) == before
    outside = Path(str(world).replace("hostile", "outside"))
    if outside.is_dir():
        assert digest(outside) == (world / "outside_digest").read_text()


def test_messages_say_what_is_wrong(world, capsys):
    expect = {
        "template_raise": "this template refuses",
        "template_loop": "did not finish within",
        "template_big_string": "more memory than",
        "template_big_output": "renders more than",
        "template_escape": "unsafe",
        "gguf_block_count_9": "the tensors hold 2 block(s)",
        "gguf_rope_nan": "must be finite",
        "config_grid": "16777216 patches",
        "state_neg": "outside 0..",
        "state_beyond": "beyond this run's 1 steps",
        "image_link_outside": "leaves the data folder (through a link",
        "image_fifo": "is a FIFO, not a regular file",
        "bench_report_dev_zero": "character device",
        "jsonl_line_33mb": "a line longer than 32.0 MB",
        "surrogate_eval_question": "unpaired surrogate (U+D800",
    }
    for name, words in expect.items():
        argv = [a.replace(W, str(world)) for a in CASES[name][0]]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err, (name, err)


def test_a_link_inside_the_data_folder_is_fine(world, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(world / "data", data)
    rec = json.loads(lines(data / "val.jsonl")[0])
    os.symlink(data / rec["image"], data / "inside.png")
    os.symlink(data / Path(rec["image"]).parent, data / "same_dir")
    linked = [rec | {"image": "inside.png"}, rec | {"image": f"same_dir/{Path(rec['image']).name}"}]
    put(data, linked)
    assert main(["eval", "--model", str(world / "teacher"), "--data", str(data), "--split", "val"]) == 0, (
        capsys.readouterr().err
    )


def test_outside_links_are_read_with_the_flag(world, capsys):
    argv = ["eval", "--model", str(world / "teacher"), "--data", str(world / "bad" / "link_file")]
    assert main(argv + ["--split", "val", "--allow-outside-images"]) == 0, capsys.readouterr().err


def test_a_well_behaved_template_still_renders_as_transformers_does(tmp_path):
    from mmmamba.data.tokenizer import load_tokenizer

    write_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    messages = [{"role": "user", "content": "héllo 😀"}, {"role": "assistant", "content": "hi"}]
    want = tok.hf.apply_chat_template(messages, tokenize=False)  # the oracle; our code never calls it
    assert tok._render([("user", "héllo 😀"), ("assistant", "hi")]) == want


def _run(args, stdin: bytes = b"", timeout: float = 120, mem_gb: int = 4):
    """The CLI in a fresh process whose whole address space (torch's libraries included) is ``mem_gb``."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (mem_gb * 1024**3, mem_gb * 1024**3))

    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "mmmamba", *args], input=stdin, capture_output=True, timeout=timeout, env=env,
        preexec_fn=limit, cwd=REPO,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["config_grid", "graft_4096_1", "jsonl_line_33mb", "bench_report_dev_zero",
                                  "template_big_string", "template_loop"])  # fmt: skip
def test_refusals_that_once_allocated_or_hung_stay_in_time_and_memory(world, name):
    argv = [a.replace(W, str(world)) for a in CASES[name][0]]
    t0 = time.perf_counter()
    r = _run(argv, timeout=90)
    assert r.returncode == 2, r.stderr.decode()[-2000:]
    err = r.stderr.decode().strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert time.perf_counter() - t0 < 60


def test_chat_replaces_undecodable_bytes_and_says_so(world):
    r = _run(["chat", "--model", str(world / "teacher"), "--max-new-tokens", "2"], stdin=b"hi \xff\xfe there\n\n")
    out, err = r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")
    assert r.returncode == 0, err
    assert "not UTF-8 text; each was replaced by U+FFFD" in out and "Traceback" not in err
