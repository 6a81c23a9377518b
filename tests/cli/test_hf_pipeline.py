"""convert → distill → eval → generate through the CLI on Hugging Face teachers: a Llama and a HoVLE."""

import json

import numpy as np
import torch
import transformers
from PIL import Image

import mmmamba
from mmmamba.cli.main import main
from mmmamba.data.tokenizer import load_tokenizer
from mmmamba.formats import save_checkpoint
from tests.formats.hf_folders import write_hovle, write_tokenizer

QA = [("what is in the picture?", "a red square"), ("count the shapes", "3"), ("hello there", "hi")]


def write_data(folder, with_images: bool):
    folder.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(6):
        q, a = QA[i % 3]
        record = {
            "id": f"s{i}",
            "family": "qa",
            "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}],
        }
        if with_images:
            size = [(60, 30), (30, 30), (20, 70)][i % 3]  # wide, square, tall: different tilings
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.png")
            record["image"] = f"{i}.png"
            record["conversations"][0]["value"] = "<image>\n" + q
        lines.append(json.dumps(record))
    for split in ("train", "val", "test"):
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


def run_pipeline(tmp_path, teacher, capsys):
    student, out = tmp_path / "student", tmp_path / "run"
    args = ["convert", "--teacher", str(teacher), "--out", str(student), "--keep-attention", "tail:1"]
    assert main(args + ["--max-shard-size", "40KB"]) == 0
    assert len(list(student.glob("model-*.safetensors"))) > 1 and (student / "model.safetensors.index.json").exists()
    seeded = mmmamba.from_pretrained(student)
    again = tmp_path / "again"
    save_checkpoint(seeded, again)
    assert all(
        torch.equal(a, b)
        for a, b in zip(seeded.state_dict().values(), mmmamba.from_pretrained(again).state_dict().values())
    )
    args = ["distill", "--teacher", str(teacher), "--student", str(student), "--data", str(tmp_path / "data")]
    args += ["--out", str(out), "--steps-per-stage", "2", "--batch-size", "2", "--device", "cpu"]
    assert main(args) == 0
    final = out / "after_stage3"
    model = mmmamba.from_pretrained(final)
    assert model.config.mixers[-1] == "attention" and "mamba2" in model.config.mixers
    assert load_tokenizer(final).chat(QA[:1]) == load_tokenizer(teacher).chat(QA[:1])  # tokenizer travelled
    report = tmp_path / "eval.json"
    args = ["eval", "--model", str(final), "--data", str(tmp_path / "data"), "--split", "test", "--json", str(report)]
    assert main(args) == 0
    assert json.loads(report.read_text())["n"] == 6
    capsys.readouterr()
    return final


def test_llama_teacher_end_to_end(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    tok = write_tokenizer(teacher)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(teacher)
    write_data(tmp_path / "data", with_images=False)
    final = run_pipeline(tmp_path, teacher, capsys)
    args = ["generate", "--model", str(final), "--prompt", "hello there", "--max-new-tokens", "4", "--device", "cpu"]
    assert main(args) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_hovle_teacher_end_to_end_with_tiled_images(tmp_path, capsys):
    write_hovle(tmp_path / "teacher")
    write_data(tmp_path / "data", with_images=True)
    final = run_pipeline(tmp_path, tmp_path / "teacher", capsys)
    image = str(tmp_path / "data" / "0.png")
    args = ["generate", "--model", str(final), "--image", image, "--prompt", "what?", "--max-new-tokens", "3"]
    assert main(args + ["--device", "cpu"]) == 0


def test_image_on_a_text_model_is_a_clear_error(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    tok = write_tokenizer(teacher)
    transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    ).save_pretrained(teacher)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert main(["generate", "--model", str(teacher), "--image", str(tmp_path / "x.png"), "--prompt", "hi"]) == 2
    assert "has no image front-end; drop --image" in capsys.readouterr().err
