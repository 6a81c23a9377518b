"""Several processes (gloo, CPU): FSDP2 and layer-parallel distillation match one process with the
same global batch, and a sharded state resumes on another process count (2 → 1 and 1 → 2)."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mmmamba.convert import convert_to_mamba
from mmmamba.data.suite import make_suite
from mmmamba.distill.config import DistillConfig
from mmmamba.distill.trainer import distill
from mmmamba.formats import load_checkpoint, save_checkpoint
from mmmamba.training.parallel import layer_owners

TINY = Path(__file__).resolve().parents[2] / "models" / "tiny-teacher"
CFG = dict(stages=[1, 2, 3], steps={1: 2, 2: 2, 3: 2}, batch_size=4, eval_every=2, val_limit=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, jobs: list) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        for out, cfg, stop in jobs:
            distill(TINY, Path(root) / "student", Path(root) / "data", Path(root) / out, DistillConfig(**cfg), stop,
                    progress=False)  # fmt: skip
    finally:
        torch.distributed.destroy_process_group()


def spawn(root: Path, jobs: list, world: int = 2) -> None:
    mp.spawn(_worker, args=(world, _free_port(), str(root), jobs), nprocs=world, join=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    make_suite(root / "data", seed=3, sizes={"train": 8, "val": 2, "test": 1})
    save_checkpoint(convert_to_mamba(load_checkpoint(TINY), [1]), root / "student")  # hybrid: attention in layer 1
    one = lambda out, stop=None, **kw: distill(  # noqa: E731
        TINY, root / "student", root / "data", root / out, DistillConfig(**{**CFG, **kw}), stop, progress=False
    )
    one("single")
    one("single_micro", micro_batch=1)
    one("single_packed", pack=True)
    one("from_one", stop=3)  # 1 process stops in stage 2 (train_state.pt) ...
    spawn(root, [
        ("fsdp", CFG, None),
        ("fsdp_packed", {**CFG, "pack": True, "micro_batch": 1}, None),
        ("layer", {**CFG, "parallel": "layer"}, None),
        ("fsdp_ckpt", {**CFG, "checkpoint_activations": True}, None),  # recomputed in backward, under FSDP2
        ("layer_ckpt", {**CFG, "parallel": "layer", "checkpoint_activations": True}, None),
        ("from_two", CFG, 3),  # 2 processes stop in stage 2 (sharded state) ...
        ("from_one", CFG, None),  # ... and resume what 1 process left
        ("fsdp_resumed", CFG, 3),  # 2 processes stop in stage 2 ...
        ("fsdp_resumed", CFG, None),  # ... and 2 processes resume it
    ])  # fmt: skip
    one("from_two")  # ... resumed by 1 process
    return root


def weights(folder: Path) -> dict:
    return load_checkpoint(folder / "after_stage3").state_dict()


def losses(folder: Path) -> list[float]:
    rows = (folder / "log.csv").read_text().splitlines()[1:]
    return [float(r.split(",")[3]) for r in rows]


def assert_same(a: Path, b: Path, rtol=1e-4, atol=1e-5):  # float32 sums in another order: ~1e-6 apart
    assert losses(a) == pytest.approx(losses(b), rel=rtol)
    wa, wb = weights(a), weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=rtol, atol=atol, msg=k)


@pytest.mark.parametrize(
    "run",
    ["fsdp", "layer", "single_micro", "single_packed", "fsdp_packed", "from_one", "from_two"]
    + ["fsdp_ckpt", "layer_ckpt"],
)
def test_runs_match_one_process_with_the_same_global_batch(runs, run):
    assert_same(runs / "single", runs / run)
    assert not (runs / run / "train_state.pt").exists() and not (runs / run / "train_state.dcp").exists()


def test_a_stopped_sharded_run_resumes_bit_exactly(runs):
    assert losses(runs / "fsdp_resumed") == losses(runs / "fsdp")
    a, b = weights(runs / "fsdp"), weights(runs / "fsdp_resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weights_moved(runs):
    student = load_checkpoint(runs / "student").state_dict()
    moved = {k for k, v in weights(runs / "fsdp").items() if not torch.equal(v, student[k])}
    assert any(".mixer.dt_bias" in k for k in moved) and not any("mlp" in k for k in moved)


def test_packed_micro_batches_keep_every_sample_one_row_each():
    from mmmamba.data.conversations import Example
    from mmmamba.distill.trainer import micro_batches

    examples = [Example(list(range(1, n + 1)), [False] * n, None) for n in (5, 9, 3, 7, 2)]
    cfg = DistillConfig(pack=True, micro_batch=4)
    rows = micro_batches(examples, [0, 1, 2, 3, 4], cfg, 0, "cpu")
    assert [r.input_ids.shape[1] for r in rows] == [24, 2]  # samples 0-3 in one row, then the next micro-batch
    assert [r.cu_seqlens.tolist() for r in rows] == [[0, 5, 14, 17, 24], [0, 2]]


def test_layer_owners_split_evenly():
    assert layer_owners([0, 2, 3], 2) == {0: 0, 2: 0, 3: 1}
    assert sorted(layer_owners(list(range(7)), 3).values()) == [0, 0, 0, 1, 1, 2, 2]
