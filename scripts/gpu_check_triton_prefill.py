"""Device check: a distilled student's prefill through the Triton scan vs the PyTorch scan.

    python scripts/gpu_check_triton_prefill.py STUDENT_DIR SUITE_DIR [float32|bfloat16]
Compares logits on a left-padded batch of test prompts, then greedy answers and task accuracy on
400 test samples with MMMAMBA_SSD_BACKEND=torch and =triton (float32 model: exact-fp32 kernel;
bfloat16 model: TF32 kernel, what ``auto`` picks).
"""

import os
import sys
from pathlib import Path

import torch

import mmmamba
from mmmamba.data.conversations import read_jsonl
from mmmamba.data.images import ImageProcessor
from mmmamba.data.tokenizer import load_tokenizer
from mmmamba.evaluation.tasks import predict, score
from mmmamba.infer.generate import left_pad

model_dir, data = Path(sys.argv[1]), Path(sys.argv[2])
dtype = getattr(torch, sys.argv[3] if len(sys.argv) > 3 else "float32")
model = mmmamba.from_pretrained(model_dir).to(dtype).cuda().eval()
tok = load_tokenizer(model_dir)
samples = read_jsonl(data / "test.jsonl")[:400]
images = ImageProcessor(model.config.vision)
batch = samples[::50]
prompts, pixels = [], []
for s in batch:
    pix, counts = images.load_many(s.images)
    prompts.append(tok.user_turn(s.turns[0][0], image_tokens=counts))
    pixels.append(pix)
ids, mask = left_pad(prompts, tok.pad_id, "cuda")
pixels = torch.cat(pixels).cuda().to(dtype)
logits, answers = {}, {}
for backend in ("torch", "triton"):
    os.environ["MMMAMBA_SSD_BACKEND"] = backend
    with torch.no_grad():
        logits[backend] = model(ids, pixels, mask).logits
    answers[backend] = predict(model, tok, samples, progress=False)
    accuracy = score(samples, answers[backend])["mean_accuracy"]
    print(f"{dtype} {backend}: mean accuracy {accuracy:.4f} on {len(samples)} samples")
diff = (logits["torch"].float() - logits["triton"].float()).abs().max().item()
same = sum(answers["torch"][k] == answers["triton"][k] for k in answers["torch"])
print(f"max |logits torch − triton| = {diff:.2e} (logit scale {logits['torch'].abs().max().item():.1f})")
print(f"identical greedy answers: {same}/{len(samples)}")
