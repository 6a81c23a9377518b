"""Does the grafted image front-end's starting scale decide whether phase `embed` learns one task family?

    python -m mmmamba.experiments.patch_scale --vlm runs/deep/vlm --data runs/probe_suite --family position \
        --steps 150 --batch-size 16

Trains only the image front-end (the LLM frozen, as `teacher tune`'s phase `embed`) twice from the same
grafted VLM, on one family of a `mmmamba data make` suite, with the same batches:
- ``default``: the front-end as `teacher graft` makes it (nn.Linear's init; positions at std 0.02);
- ``matched``: the projection rescaled so that patch tokens have the mean row norm of the LLM's text
  embeddings, and the positions drawn at the embedding table's std.
Prints the teacher-forced answer loss on the family's val split every 10 steps (RESULTS.md §2).
"""

from __future__ import annotations

import argparse
import time

import torch

from ..data.conversations import collate, encode_sample, read_split
from ..data.images import image_processor
from ..data.tokenizer import load_tokenizer
from ..formats import load_checkpoint
from ..teacher.vlm import WeightedBatch, piece_loss


@torch.no_grad()
def match_embedding_scale(model, pixels: torch.Tensor) -> float:
    """Rescale the front-end in place; returns the factor applied to the projection."""
    vision = model.vision
    text_norm = model.embed_tokens.weight.norm(dim=-1).mean()
    patch_tokens = vision(pixels) - vision.pos  # (n, patches, hidden) without the positions
    patch_norm, pos_norm = patch_tokens.norm(dim=-1).mean(), vision.pos.norm(dim=-1).mean()
    print(f"as grafted: text-embedding rows {text_norm:.2f}, patch tokens {patch_norm:.2f}, positions {pos_norm:.3f}")
    factor = float(text_norm / patch_norm)
    vision.proj.weight.mul_(factor)
    vision.proj.bias.mul_(factor)
    vision.pos.normal_(0, float(model.embed_tokens.weight.std()))
    return factor


def run(arm: str, args) -> None:
    torch.manual_seed(args.seed)
    model = load_checkpoint(args.vlm).float()
    if model.config.vision is None or model.config.vision.style != "fuyu":
        raise SystemExit(f"--vlm {args.vlm}: needs a fuyu front-end (`mmmamba teacher graft --vision fuyu`)")
    tok, images = load_tokenizer(args.vlm), image_processor(model.config.vision)
    train = [encode_sample(s, tok, images) for s in read_split(args.data, "train") if s.family == args.family]
    val = [encode_sample(s, tok, images) for s in read_split(args.data, "val") if s.family == args.family]
    if not train or not val:
        raise SystemExit(f"--family {args.family}: no train or val samples in {args.data}")
    if arm == "matched":
        factor = match_embedding_scale(model, torch.cat([e.pixels for e in train[:32]]))
        print(f"matched: projection scaled by {factor:.3f}", flush=True)
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.vision.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(args.seed + 1)  # the same batches for both arms

    def loss_of(examples):  # `teacher tune`'s own loss: the mean answer loss of the batch
        return piece_loss(model, WeightedBatch(collate(examples, tok.pad_id), 1.0))

    began = time.time()
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(train), (args.batch_size,), generator=order)
        loss = loss_of([train[i] for i in idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == args.steps:
            with torch.no_grad():
                val_loss = float(loss_of(val))
            train_loss, seconds = float(loss.detach()), time.time() - began
            print(f"{arm} step {step}: train {train_loss:.3f}, val {val_loss:.3f} ({seconds:.0f} s)", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vlm", required=True, help="a VLM from `mmmamba teacher graft --vision fuyu`")
    p.add_argument("--data", required=True, help="a `mmmamba data make` suite")
    p.add_argument("--family", default="position")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", nargs="+", default=["default", "matched"], choices=["default", "matched"])
    args = p.parse_args()
    for arm in args.arms:
        run(arm, args)


if __name__ == "__main__":
    main()
