"""llama.cpp serves our students as a user would run it (not in CI: building llama-cpp-python takes minutes).

    python recipes/check_llama_cpp.py --work /tmp/llama [--model STUDENT] [--site DIR] [--sdist FILE]

1. builds ``llama-cpp-python`` from its PyPI sdist on the CPU into WORK/site (``--site`` reuses a build;
   ``--sdist`` a downloaded file): it vendors llama.cpp and its ``convert_hf_to_gguf.py``;
2. exports the student with ``mmmamba export --format granite-hybrid --mamba-expand 2`` (llama.cpp's
   GraniteHybrid reads only expand 2) and converts the folder with llama.cpp's own converter to an f32 GGUF;
3. compares llama.cpp's next-token logits and greedy tokens with ours on 20 prompts. Targets: greedy
   tokens equal, logits within 1e-3 of the largest logit's magnitude.

Without ``--model`` it checks two tiny random gate-first students (linear, and hybrid with attention
kept at layer 1) that carry the GPT-2 vocabulary of llama.cpp's ``models/ggml-vocab-gpt-2.gguf``, a
tokenizer the converter recognises. llama.cpp's converter turns RoPE off for a GraniteMoeHybrid with
Mamba layers (``rope.scaling.finetuned`` false: Granite-4.0-H attention has no position embedding); a
hybrid student's attention needs RoPE, so ``--rope-fix`` (on by default) sets the key back with
llama.cpp's own ``gguf_set_metadata.py``, and the check also reports the result without it. The KV cache
runs in f32 (llama.cpp's default f16 moves the logits by ~5e-4). Observed with llama-cpp-python 0.3.36
(results/llama_cpp_cpu_2026-12-02): the hybrid passes (4.3e-6, 20/20) after the fix. The linear student
aborts in llama.cpp (a KV cache of 0 layers: ``GGML_ASSERT(buffer)``); each GGUF runs in a child process,
so that an abort is reported rather than fatal. Exit code 0 only when every final check passes.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import types
from pathlib import Path

PROMPTS = [
    "The capital of France is", "Once upon a time", "def fibonacci(n):", "1, 2, 3, 4,", "The quick brown fox",
    "In 1492, Columbus", "Water boils at", "import numpy as np\n", "Dear Sir or Madam,", "The mitochondria is",
    "SELECT * FROM", "To be or not to be", "Hello, my name is", "The square root of 16 is", "Mamba is a",
    "Paris, London, Berlin,", "A B C D E", "Translate to German: cat", "Q: What is 2+2?\nA:", "The end.",
]  # fmt: skip


def sh(cmd, **kw):
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(list(map(str, cmd)), check=True, **kw)


def build(work: Path, sdist: str | None) -> Path:
    """llama-cpp-python built from its sdist into work/site (CPU, this machine's instruction set)."""
    site = work / "site"
    if (site / "llama_cpp").is_dir():
        return site
    if sdist is None:
        sh([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "llama-cpp-python",
            "-d", work / "sdist"])  # fmt: skip
        sdist = sorted(glob.glob(str(work / "sdist" / "llama_cpp_python-*.tar.gz")))[-1]
    flags = "-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
    flags += " -DLLAMA_BUILD_TOOLS=OFF"  # the Python package needs libllama and libggml only
    env = {**os.environ, "CMAKE_ARGS": flags, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count())}
    offline = ["--no-build-isolation"] if importlib.util.find_spec("scikit_build_core") else []  # no download
    sh([sys.executable, "-m", "pip", "install", "--no-deps", *offline, "--target", site, sdist], env=env)
    return site  # its one runtime need this environment lacks, diskcache, is stood in for by ``llama_worker``


def vendor_tree(work: Path, sdist: str | None) -> Path:
    """The llama.cpp tree the sdist vendors (converter, gguf-py, vocab files)."""
    found = sorted(glob.glob(str(work / "src" / "llama_cpp_python-*" / "vendor" / "llama.cpp")))
    if found:
        return Path(found[-1])
    sdists = [sdist] if sdist else sorted(glob.glob(str(work / "sdist" / "llama_cpp_python-*.tar.gz")))
    if not sdists:
        print(f"--work {work}: no llama-cpp-python sdist in {work / 'sdist'}; pass --sdist FILE or a --work folder "
              "an earlier run built in", file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    sdist = sdists[-1]
    with tarfile.open(sdist) as t:
        t.extractall(work / "src", filter="data")
    return vendor_tree(work, sdist)


def tiny_students(work: Path, vendor: Path) -> list[Path]:
    """Two random gate-first students with GPT-2's vocabulary (padded to a multiple of 8, as llama.cpp pads)."""
    import torch

    from mmmamba.convert import convert_to_mamba
    from mmmamba.formats import save_checkpoint
    from mmmamba.formats.gguf import gguf_hf_tokenizer, write_tokenizer
    from mmmamba.models import Decoder, DecoderConfig

    hf = gguf_hf_tokenizer(vendor / "models" / "ggml-vocab-gpt-2.gguf", vocab_only=True)
    out = []
    for name, keep in (("tiny-linear", []), ("tiny-hybrid", [1])):
        folder = work / name
        if not (folder / "config.json").is_file():
            torch.manual_seed(len(keep))
            cfg = DecoderConfig(vocab_size=-(-len(hf) // 8) * 8, hidden_size=64, num_layers=3, num_heads=4,
                                num_kv_heads=2, head_dim=16, intermediate_size=96, rope_theta=1e4)  # fmt: skip
            student = convert_to_mamba(Decoder(cfg), keep, mamba={"gate_order": "gate-first", "conv_kernel": 4})
            with torch.no_grad():
                for n, p in student.named_parameters():
                    if n.endswith("A_log"):
                        p.uniform_(-2, 1)
                    elif "norm" not in n:
                        p.normal_(0, 0.2)
            save_checkpoint(student, folder, extra=lambda d: write_tokenizer(hf, d))
        out.append(folder)
    return out


def llama_logits(site: Path, gguf: Path, prompts: list[list[int]], new_tokens: int):
    """(next-token logits after each prompt, greedy continuations) from llama.cpp, or None when llama.cpp
    aborts. It runs in a child process: a GGML_ASSERT kills the process that hit it."""
    import numpy as np

    out = gguf.with_suffix(".llama.npz")
    job = json.dumps({"site": str(site), "gguf": str(gguf), "prompts": prompts, "new": new_tokens, "out": str(out)})
    worker = [sys.executable, __file__, "--llama-worker", job]  # its stdout: a backtrace when llama.cpp aborts
    rc = subprocess.run(worker, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if rc.returncode:
        lines = [line for line in rc.stderr.splitlines() if "GGML_ASSERT" in line or "error" in line.lower()]
        print(f"llama.cpp failed on {gguf.name} (exit {rc.returncode}): {lines[:1] or rc.stderr[-300:]}")
        return None
    data = np.load(out)
    return list(data["logits"]), data["greedy"].tolist()


def llama_worker(job: str) -> int:
    """The child process of ``llama_logits``."""
    job = json.loads(job)
    sys.path.insert(0, job["site"])
    if importlib.util.find_spec("diskcache") is None:  # llama_cpp imports it for its on-disk prompt cache, which
        sys.modules["diskcache"] = types.SimpleNamespace(Cache=object)  # the check never uses: no download
    import llama_cpp
    import numpy as np

    f32 = llama_cpp.GGML_TYPE_F32  # the KV cache in f32 too (llama.cpp's default is f16: ~5e-4 of the logits)
    llm = llama_cpp.Llama(job["gguf"], n_ctx=256, n_threads=os.cpu_count(), logits_all=True, verbose=False,
                          type_k=f32, type_v=f32)  # fmt: skip
    logits, greedy = [], []
    for ids in job["prompts"]:
        llm.reset()
        llm.eval(ids)
        logits.append(np.array(llm.scores[len(ids) - 1]))
        toks = []
        for _ in range(job["new"]):
            toks.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([toks[-1]])
        greedy.append(toks)
    np.savez(job["out"], logits=np.stack(logits), greedy=np.array(greedy))
    return 0


def ours(model_dir: Path, prompts: list[list[int]], new_tokens: int):
    import torch

    from mmmamba.formats import load_checkpoint
    from mmmamba.infer import generate

    model = load_checkpoint(model_dir).float().eval()
    with torch.no_grad():
        logits = [model(torch.tensor([p])).logits[0, -1].numpy() for p in prompts]
    greedy = [generate(model, [p], max_new_tokens=new_tokens, decode="eager")[0] for p in prompts]
    return logits, greedy


def check(student: Path, work: Path, site: Path, vendor: Path, new_tokens: int, rope_fix: bool) -> dict:
    import numpy as np

    from mmmamba.data.tokenizer import load_tokenizer

    name = student.name
    export = work / f"{name}-granite"
    if not (export / "config.json").is_file():
        sh([sys.executable, "-m", "mmmamba", "export", "--format", "granite-hybrid", "--model", student,
            "--out", export, "--mamba-expand", "2"])  # fmt: skip
    gguf = work / f"{name}-f32.gguf"
    env = {**os.environ, "PYTHONPATH": f"{vendor / 'gguf-py'}:{os.environ.get('PYTHONPATH', '')}"}
    convert = [sys.executable, vendor / "convert_hf_to_gguf.py", export, "--outtype", "f32", "--outfile", gguf]
    sh(convert, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tok = load_tokenizer(student)
    prompts = [tok.encode_text(p) for p in PROMPTS]
    ref_logits, ref_greedy = ours(student, prompts, new_tokens)
    hybrid = "attention" in json.loads((student / "config.json").read_text())["mixers"]
    report = {}
    for fixed in [False, True] if hybrid and rope_fix else [False]:
        if fixed:
            key = "granitehybrid.rope.scaling.finetuned"
            fix = [sys.executable, vendor / "gguf-py/gguf/scripts/gguf_set_metadata.py", gguf, key, "1", "--force"]
            sh(fix, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        got = llama_logits(site, gguf, prompts, new_tokens)
        tag = f"{name}{' rope-fixed' if fixed else ''}"
        if got is None:
            report[tag] = {"pass": False, "error": "llama.cpp aborted"}
            continue
        got_logits, got_greedy = got
        rel = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(got_logits, ref_logits))
        equal = sum(a == b for a, b in zip(got_greedy, ref_greedy))
        report[tag] = {"max_logit_error_rel": rel, "greedy_equal": f"{equal}/{len(prompts)}",
                       "pass": rel <= 1e-3 and equal == len(prompts)}  # fmt: skip
        print(f"{tag}: next-token logits max |Δ| / max |logit| = {rel:.2e}; greedy {new_tokens} tokens equal on "
              f"{equal}/{len(prompts)} prompts -> {'PASS' if report[tag]['pass'] else 'FAIL'}", flush=True)  # fmt: skip
    return report


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--llama-worker":
        return llama_worker(sys.argv[2])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="scratch folder (build, exports, GGUFs)")
    p.add_argument("--model", nargs="*", default=None, help="student checkpoint folders (default: two tiny ones)")
    p.add_argument("--site", default=None, help="an existing llama-cpp-python --target build")
    p.add_argument("--sdist", default=None, help="a downloaded llama-cpp-python sdist (.tar.gz)")
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--no-rope-fix", dest="rope_fix", action="store_false")
    args = p.parse_args()
    if importlib.util.find_spec("mmmamba") is None:  # before the build, which takes minutes
        print("mmmamba is not importable here: `pip install -e .` in the checkout first", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    site = Path(args.site) if args.site else build(work, args.sdist)
    vendor = vendor_tree(work, args.sdist)
    students = [Path(m) for m in args.model] if args.model else tiny_students(work, vendor)
    report = {}
    for s in students:
        report |= check(s, work, site, vendor, args.new_tokens, args.rope_fix)
    (work / "report.json").write_text(json.dumps(report, indent=1))
    final = {k: r for k, r in report.items() if "rope-fixed" in k or k + " rope-fixed" not in report}
    return 0 if all(r["pass"] for r in final.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
