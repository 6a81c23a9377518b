"""On a GPU: greedy generation with CUDA-graph decode gives the same tokens as eager decode.

python scripts/gpu_check_cuda_graph.py MODEL_DIR DATA_DIR
"""

import sys
from pathlib import Path

import torch

import mmmamba
from mmmamba.data.conversations import read_jsonl
from mmmamba.data.images import ImageProcessor
from mmmamba.data.tokenizer import ByteTokenizer
from mmmamba.infer import generate

model_dir, data = Path(sys.argv[1]), Path(sys.argv[2])
model = mmmamba.from_pretrained(model_dir).float().cuda()
tok = ByteTokenizer.load(model_dir)
images = ImageProcessor(model.config.vision)
samples = read_jsonl(data / "test.jsonl")[::25]
for s in samples:  # one at a time (different lengths) and then one batch
    prompt = [tok.user_turn(s.turns[0][0])]
    pixels = images.load_many(s.images)[0] if s.images else None
    eager = generate(model, prompt, pixels, 16, stop_ids=(tok.end_id,))
    graph = generate(model, prompt, pixels, 16, stop_ids=(tok.end_id,), cuda_graph=True)
    assert eager == graph, (s.id, eager, graph)
prompts = [tok.user_turn(s.turns[0][0]) for s in samples]
pixels = torch.cat([images.load_many(s.images)[0] for s in samples])
eager = generate(model, prompts, pixels, 16, stop_ids=(tok.end_id,), pad_id=tok.pad_id)
graph = generate(model, prompts, pixels, 16, stop_ids=(tok.end_id,), pad_id=tok.pad_id, cuda_graph=True)
assert eager == graph
print(
    f"{len(samples)} prompts alone and as one left-padded batch: CUDA-graph decode == eager decode "
    f"({sum(map(len, graph))} tokens) on {torch.cuda.get_device_name()}"
)
