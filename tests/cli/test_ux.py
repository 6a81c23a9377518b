"""What a new user meets: --help, --version, messages that say what happened, chat, numbers in results."""

import io
import json
import math
import sys

import pytest
import torch

from mmmamba.bench import decode, scan, speed
from mmmamba.bench import report as bench_report
from mmmamba.cli import formats as cli_formats
from mmmamba.cli import main as cli
from mmmamba.cli.main import main
from mmmamba.convert import convert_to_mamba
from mmmamba.data.suite import make_suite
from mmmamba.data.tokenizer import ByteTokenizer, load_tokenizer
from mmmamba.errors import MmmambaError
from mmmamba.evaluation.tasks import score
from mmmamba.formats import load_checkpoint, save_checkpoint
from mmmamba.infer import ChatSession, SamplingConfig
from mmmamba.infer.sampling import sample_next
from mmmamba.io import round_floats, write_json_atomic
from mmmamba.models import Decoder, DecoderConfig, VisionConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ux")
    make_suite(root / "data", seed=1, sizes={"train": 2, "val": 1, "test": 1})
    tok = ByteTokenizer(image_tokens=16)
    torch.manual_seed(0)
    vision = VisionConfig(32, 8, 3)
    cfg = DecoderConfig(tok.vocab_size, 32, 2, 4, 2, 8, 64, max_position=1024, vision=vision, image_token_id=261)
    teacher = Decoder(cfg)
    save_checkpoint(teacher, root / "teacher", extra=tok.save)
    save_checkpoint(convert_to_mamba(teacher, []), root / "linear", extra=tok.save)
    save_checkpoint(convert_to_mamba(teacher, [1]), root / "hybrid", extra=tok.save)
    return root


def help_text(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv + ["--help"]) == 0
    return capsys.readouterr().out


# ---- --help, --version, errors under the sub-command's name ----


def test_help_shows_defaults(capsys):
    text = " ".join(help_text(["distill"], capsys).split())
    for option, default in (("--steps-per-stage", "300,300,600"), ("--batch-size", "16"), ("--lr-scale", "1.0")):
        assert f"(default: {default})" in text.split(option, 2)[-1].split("--", 1)[0] + text, option
    assert "(default: 300,300,600)" in text and "(default: 16)" in text and "(default: 1.0)" in text


def test_generate_lists_its_required_prompt_as_required(capsys):
    text = help_text(["generate"], capsys)
    required = text.split("required arguments:", 1)[1]
    assert "--prompt PROMPT" in required and "the user message" in required and "--model MODEL" in required


@pytest.mark.parametrize(
    "action, module", [("speed", speed), ("scan", scan), ("decode", decode), ("report", bench_report)]
)
def test_bench_help_has_the_right_usage_and_no_rest_markup(action, module, capsys):
    with pytest.raises(SystemExit):
        module.main(["--help"])
    text = capsys.readouterr().out
    assert text.startswith(f"usage: mmmamba bench {action} ")
    assert "``" not in text and "python -m" not in text


def test_version(capsys):
    import mmmamba

    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"mmmamba {mmmamba.__version__}"


@pytest.mark.parametrize("argv, name", [(["info", "--model", "x", "--bogus"], "mmmamba info"),
                                        (["teacher", "train", "--data", "d", "--out", "o", "--nope"],
                                         "mmmamba teacher train")])  # fmt: skip
def test_unknown_arguments_are_reported_under_the_sub_command(argv, name, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{name}: error: unrecognized arguments:") and len(err.splitlines()) == 1


# ---- output that says what happened ----


def test_convert_auto_says_what_it_keeps(world, tmp_path, capsys):
    out = tmp_path / "auto"
    argv = ["convert", "--teacher", str(world / "teacher"), "--out", str(out), "--keep-attention", "auto:1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "auto:1" in text and "after stage 2" in text
    assert main(["convert", "--teacher", str(world / "teacher"), "--out", str(tmp_path / "e"), "--keep-attention",
                 "every:2"]) == 0  # fmt: skip
    assert "attention kept at [0]" in capsys.readouterr().out


def test_info_is_a_readable_summary(world, capsys):
    assert main(["info", "--model", str(world / "hybrid")]) == 0
    text = capsys.readouterr().out
    for part in ("float32", "on disk", "conv kernel 2", "state 4 heads x 8 x 8", "M A", "hybrid"):
        assert part in text, part
    assert "{" not in text


def test_interrupt_of_a_command_with_nothing_to_resume_does_not_promise_a_resume(world, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_formats, "cmd_info", interrupted)
    assert main(["info", "--model", str(world / "teacher")]) == 130
    assert "resume" not in capsys.readouterr().err


# ---- chat ----


def run_chat(argv, lines, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    capsys.readouterr()
    rc = main(["chat", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_chat_commands_are_handled_locally(world, monkeypatch, capsys):
    sent = []
    real = ChatSession.ask

    def ask(self, text, *a, **k):
        sent.append(text)
        return real(self, text, *a, **k)

    monkeypatch.setattr(ChatSession, "ask", ask)
    image = next((world / "data" / "images").rglob("*.png"))
    lines = ["/help", "hello", "/image " + str(image), "what is it?", "/image nope.png", "/bogus", "/reset", "hi"]
    rc, out, err = run_chat(["--model", world / "teacher", "--max-new-tokens", "2"], lines, monkeypatch, capsys)
    assert rc == 0 and "Traceback" not in err
    assert sent == ["hello", "what is it?", "hi"]  # no slash command reached the model
    assert "/image PATH" in out and "unknown command /bogus" in out and "does not exist" in out
    assert "context" in err and "/1024" in err  # the counter


@pytest.mark.parametrize("model", ["teacher", "linear", "hybrid"])
def test_chat_past_its_context_starts_a_new_turn(world, model, monkeypatch, capsys):
    lines = ["a first message that is fairly long", "a second message, also long", "x" * 200, "short"]
    argv = ["--model", world / model, "--max-context", "48", "--max-new-tokens", "4"]
    rc, out, err = run_chat(argv, lines, monkeypatch, capsys)
    assert rc == 0 and "Traceback" not in out + err
    assert "a new conversation started" in err
    assert "no room for an answer in the 48-token context" in out


@pytest.mark.parametrize("model", ["teacher", "linear", "hybrid"])
def test_chat_session_never_holds_more_than_its_context(world, model):
    m = load_checkpoint(world / model).eval()
    chat = ChatSession(m, load_tokenizer(world / model), SamplingConfig(), max_length=16)
    for text in ["hello", "again", "and again"]:
        answer = chat.ask(text, max_new_tokens=8)
        assert 1 <= len(answer) <= 8 and chat.tokens + 1 <= 16
    with pytest.raises(MmmambaError, match="no room"):
        chat.ask("y" * 40)


# ---- generate ----


def test_tiny_temperatures_sample_like_greedy():
    logits = torch.randn(3, 50) * 10
    for t in (1e-308, 1e-40, 1e-30, 1e-8):  # 1e-308 is 0 in float32
        assert torch.equal(sample_next(logits, SamplingConfig(temperature=t)), logits.argmax(-1))


def test_generate_with_a_tiny_temperature_and_its_speed(world, capsys):
    argv = ["generate", "--model", str(world / "linear"), "--prompt", "hi", "--temperature", "1e-40"]
    assert main(argv + ["--max-new-tokens", "4"]) == 0
    err = capsys.readouterr().err
    assert "tokens/s" in err and "prefill" in err


# ---- numbers in results ----


def test_json_numbers_are_rounded(tmp_path):
    f = tmp_path / "r.json"
    write_json_atomic(f, {"a": 0.42500000000000004, "b": [1 / 3, 7], "c": True, "d": "0.1"})
    assert json.loads(f.read_text()) == {"a": 0.425, "b": [0.333333, 7], "c": True, "d": "0.1"}
    write_json_atomic(f, {"lr": 1 / 3}, digits=None)  # settings are kept exactly
    assert json.loads(f.read_text())["lr"] == 1 / 3
    assert round_floats(float("nan")) != round_floats(float("nan"))  # non-finite values are left alone


def test_eval_json_has_rounded_numbers_standard_errors_and_n_per_family(world, tmp_path, capsys):
    f = tmp_path / "eval.json"
    assert main(["eval", "--model", str(world / "teacher"), "--data", str(world / "data"), "--json", str(f)]) == 0
    text = capsys.readouterr().out
    assert "±" in text and "(n = 1)" in text
    report = json.loads(f.read_text())
    assert set(report["per_family_stderr"]) == set(report["per_family"]) == set(report["per_family_n"])

    def digits(v):
        return len(repr(v).lstrip("0.-").replace(".", "").split("e")[0].rstrip("0"))

    floats = []
    stack = [report]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack += v.values()
        elif isinstance(v, list):
            stack += v
        elif isinstance(v, float):
            floats.append(v)
    assert floats and all(digits(v) <= 6 for v in floats)


def test_standard_errors_of_a_score():
    from mmmamba.data.conversations import Sample

    samples = [Sample(f"s{i}", "fam", [], [("q", "a")]) for i in range(4)]
    predictions = {"s0": "a", "s1": "a", "s2": "b", "s3": "b"}
    r = score(samples, predictions)
    assert r["per_family_n"] == {"fam": 4}
    assert math.isclose(r["per_family_stderr"]["fam"], math.sqrt(0.25 / 4))
    assert math.isclose(r["mean_accuracy_stderr"], math.sqrt(0.25 / 4))


# ---- remote-code tokenizer folders ----


def test_a_remote_code_tokenizer_folder_is_read_from_its_files(tmp_path):
    from mmmamba.data.hf_tokenizer import HFTokenizer, _no_eos_fix
    from tests.formats.hf_folders import write_tokenizer

    write_tokenizer(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg |= {"tokenizer_class": "OwnTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_own.OwnTokenizer", None]}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "tokenization_own.py").write_text("raise SystemExit('the folder code ran')\n")
    tok = HFTokenizer(tmp_path)
    assert tok.end_id == tok.hf.convert_tokens_to_ids("</s>") and tok.template is not None
    fix = _no_eos_fix(tmp_path)  # the advice, were the id missing, names what the file already sets
    assert "set eos_token" not in fix and "'</s>'" in fix
    del cfg["eos_token"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert "set eos_token in tokenizer_config.json" in _no_eos_fix(tmp_path)


def test_bench_report_refuses_an_output_over_its_runs(tmp_path, capsys):
    run = tmp_path / "r.md"
    run.write_text("keep")
    assert main(["bench", "report", "--runs", str(run), "--out", str(tmp_path / "r")]) == 2
    assert run.read_text() == "keep" and len(capsys.readouterr().err.strip().splitlines()) == 1
