"""`mmmamba bench ACTION`: the benchmarks, each parsing its own arguments."""

from __future__ import annotations

from ..errors import MmmambaError

ACTIONS = {  # main() hands everything after the action to that benchmark's own parser
    "speed": "prefill, next-token latency, tokens/s, memory: HF teacher, our teacher, linear, hybrid (GPU)",
    "scan": "one layer's SSD scan and decode step: PyTorch vs fla (GPU)",
    "decode": "one Mamba-2 layer's decode step: PyTorch ops vs the fused Triton kernel, from a CUDA graph (GPU)",
    "attention": "one layer's prefill attention over a long prompt: whole vs chunked, flash vs cuDNN (GPU)",
    "report": "merge speed.json runs into a markdown table and a PNG plot",
}


def add_bench(sub) -> None:
    """``bench`` and its actions (their arguments are the benchmark's own)."""
    p = sub.add_parser("bench", help="speed benchmarks (GPU): whole models, one layer's scan; tables and plots")
    bsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, what in ACTIONS.items():
        bp = bsub.add_parser(action, help=what, add_help=False)  # main() hands its arguments to the benchmark
        bp.set_defaults(func=cmd_bench, argv=[])


def cmd_bench(args) -> None:
    import importlib

    module = importlib.import_module(f"..bench.{args.action}", __package__)
    if args.action != "report" and "-h" not in args.argv and "--help" not in args.argv:
        import torch

        if not torch.cuda.is_available():
            raise MmmambaError(f"`mmmamba bench {args.action}` measures a CUDA GPU and none is visible; run it on one")
    try:
        module.main(args.argv)
    except SystemExit as e:  # the benchmark's own argparse: --help (0) or a usage error (2)
        if e.code not in (0, None):
            raise MmmambaError(f"bad arguments for `mmmamba bench {args.action}`; see --help") from None
