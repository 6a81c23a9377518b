"""Distillation stages train exactly their parameters, leave the teacher alone, resume exactly."""

from dataclasses import replace

import pytest
import torch

from mmmamba.convert import convert_to_mamba
from mmmamba.data.conversations import collate, encode_sample, read_jsonl
from mmmamba.data.images import ImageProcessor
from mmmamba.data.suite import make_suite
from mmmamba.data.tokenizer import ByteTokenizer
from mmmamba.distill.config import DistillConfig
from mmmamba.distill.prepare import prepare
from mmmamba.distill.stages import STAGES, select_trainable, stage_loss
from mmmamba.distill.trainer import distill
from mmmamba.errors import MmmambaError
from mmmamba.formats import load_checkpoint, save_checkpoint
from mmmamba.models import Decoder, DecoderConfig, VisionConfig
from mmmamba.training.losses import masked_kl, masked_mse
from mmmamba.training.optim import make_adamw


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    make_suite(root / "data", seed=1, sizes={"train": 4, "val": 1, "test": 1})
    tok = ByteTokenizer(image_tokens=16)
    torch.manual_seed(0)
    cfg = DecoderConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=64,
        vision=VisionConfig(32, 8, 3),
        image_token_id=tok.image_token_id,
    )
    teacher = Decoder(cfg)
    save_checkpoint(teacher, root / "teacher")
    tok.save(root / "teacher")
    save_checkpoint(convert_to_mamba(teacher, [1]), root / "student")
    samples = read_jsonl(root / "data" / "train.jsonl")[:6]
    batch = collate([encode_sample(s, tok, ImageProcessor(cfg.vision)) for s in samples], tok.pad_id)
    return root, teacher.eval(), batch


def one_step(stage_id, teacher, student, batch, lr=1e-2):
    stage = STAGES[stage_id]
    params = select_trainable(student, stage)
    opt = make_adamw(params, stage.optim)
    for g in opt.param_groups:
        g["lr"] = lr
    loss = stage_loss(stage, teacher, student, batch)
    loss.backward()
    opt.step()
    return {n for n, _ in params}, loss.item()


@pytest.mark.parametrize("stage_id", [1, 2, 3])
def test_stage_changes_exactly_its_parameter_set(setup, stage_id):
    root, teacher, batch = setup
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = load_checkpoint(root / "student")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trained, _ = one_step(stage_id, teacher, student, batch)
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == trained  # every trained tensor moved, nothing else did (bit-identical)
    qkv = {n for n in trained if any(p in n for p in ("q_proj", "k_proj", "v_proj"))}
    assert bool(qkv) == (stage_id >= 2)
    assert not any("o_proj" in n or "mlp" in n or "layers.1." in n for n in trained)  # Wo, MLPs, kept attention
    assert {n.split(".mixer.")[1].split(".")[0] for n in trained} >= {"conv_weight", "dt_bias", "A_log", "g_proj"}
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k])


def test_padding_does_not_change_masked_losses():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 7, 5, generator=g), torch.randn(2, 7, 5, generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    s2, t2 = s.clone(), t.clone()
    s2[1, 4:] += 100.0
    t2[1, 4:] -= 50.0
    assert torch.equal(masked_mse(s, t, mask), masked_mse(s2, t2, mask))
    assert torch.equal(masked_kl(t, s, mask, 2.0), masked_kl(t2, s2, mask, 2.0))
    # averaged, not summed: repeating the batch keeps the value
    torch.testing.assert_close(
        masked_kl(torch.cat([t, t]), torch.cat([s, s]), torch.cat([mask, mask])), masked_kl(t, s, mask)
    )
    assert float(masked_kl(t, t, mask)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("stage_id", [1, 2, 3])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(setup, stage_id):
    root, teacher, batch = setup
    student = load_checkpoint(root / "student")
    losses = [one_step(stage_id, teacher, student, batch, lr=3e-3)[1] for _ in range(8)]
    assert losses[-1] < 0.9 * losses[0]


def test_kill_and_resume_equals_uninterrupted(setup, tmp_path):
    root, _, _ = setup
    cfg = DistillConfig(stages=[1, 3], steps={1: 4, 3: 4}, batch_size=4, eval_every=2, val_limit=4)
    args = (root / "teacher", root / "student", root / "data")
    full = distill(*args, tmp_path / "full", cfg)
    distill(*args, tmp_path / "cut", cfg, stop_after=3)  # interrupted inside stage 1
    distill(*args, tmp_path / "cut", cfg, stop_after=2)  # stage 1 done, interrupted inside stage 3
    resumed = distill(*args, tmp_path / "cut", cfg)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert (tmp_path / "cut" / "after_stage1" / "config.json").exists()
    assert (tmp_path / "full" / "loss.png").stat().st_size > 1000
    saved = load_checkpoint(tmp_path / "full" / "after_stage3")
    assert {k for k in saved.state_dict() if "A_log" in k or "dt_bias" in k}  # every parameter is saved
    log = (tmp_path / "full" / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 8 and log[2].split(",")[4] != ""  # one row per step, val at step 2
    assert log[0].endswith(",tokens,seconds")
    assert all(int(r.split(",")[5]) > 0 and float(r.split(",")[6]) > 0 for r in log[1:])  # tokens/s per stage
    # stage 3's validations, with the tokens seen over both stages; the resumed run's curve is the same
    full_val, cut_val = ((tmp_path / d / "val.csv").read_text().splitlines() for d in ("full", "cut"))
    assert [r.split(",")[:3] for r in full_val] == [r.split(",")[:3] for r in cut_val]
    assert full_val[0].split(",") == ["stage", "step", "tokens_seen", "val_kl", "val_nll", "teacher_val_nll",
                                      "val_ppl_ratio"]  # fmt: skip
    tokens = [int(r.split(",")[5]) for r in log[1:]]
    assert [r.split(",")[:3] for r in full_val[1:]] == [["3", "2", str(sum(tokens[:6]))], ["3", "4", str(sum(tokens))]]


def test_val_curve_kl_is_the_plain_kl_whatever_the_stage_3_loss_options(setup, tmp_path):
    """With a CE term and a temperature, log.csv's val_loss is that full loss, but val.csv's KL stays
    KL(teacher || student) at temperature 1, so curves of runs with different options compare."""
    root, teacher, _ = setup
    options = {"ce_weight": 0.5, "temperature": 2.0}
    cfg = DistillConfig(stages=[3], steps={3: 2}, batch_size=4, eval_every=2, val_limit=4, **options)
    args = (root / "teacher", root / "student", root / "data")
    distill(*args, tmp_path / "r", cfg)
    val = prepare(*args, tmp_path / "p", cfg, progress=False).val
    student = load_checkpoint(tmp_path / "r" / "after_stage3").float().eval()
    plain = replace(STAGES[3], loss_args={"temperature": 1.0, "ce_weight": 0.0})
    with torch.no_grad():
        kl = sum(float(stage_loss(plain, teacher, student, b)) for b in val) / len(val)
        full = sum(float(stage_loss(STAGES[3].with_options(**options), teacher, student, b)) for b in val) / len(val)
    row = (tmp_path / "r" / "val.csv").read_text().splitlines()[-1].split(",")
    val_loss = (tmp_path / "r" / "log.csv").read_text().splitlines()[-1].split(",")[4]
    assert float(row[3]) == pytest.approx(kl, rel=1e-4)
    assert float(val_loss) == pytest.approx(full, rel=1e-4) and abs(full - kl) > 0.1


def test_target_nll_is_each_models_mean_target_cross_entropy(setup):
    import copy
    import math

    import torch.nn.functional as F

    from mmmamba.distill.validation import target_nll

    _, shared, batch = setup
    teacher = copy.deepcopy(shared).double()  # the module's fixture stays float32
    student = convert_to_mamba(teacher, [1]).double()
    fit = target_nll(teacher, student, [batch, batch])

    def mean_ce(model):  # every target once, by hand: position t predicts token t + 1
        logits = model(batch.input_ids, batch.pixel_values).logits[:, :-1]
        target = batch.loss_mask[:, 1:].bool()
        return float(F.cross_entropy(logits[target], batch.input_ids[:, 1:][target]))

    with torch.no_grad():
        s, t = mean_ce(student), mean_ce(teacher)
    assert math.isclose(fit["val_nll"], s, rel_tol=1e-9) and math.isclose(fit["teacher_val_nll"], t, rel_tol=1e-9)
    assert math.isclose(fit["val_ppl_ratio"], math.exp(s - t), rel_tol=1e-9)


def test_ssd_backend_is_checked_and_may_change_on_resume(setup, tmp_path):
    root, _, _ = setup
    cfg = DistillConfig(stages=[1], steps={1: 2}, batch_size=4, eval_every=2, val_limit=4)
    args = (root / "teacher", root / "student", root / "data")
    with pytest.raises(MmmambaError, match="--ssd-backend triton"):
        distill(*args, tmp_path / "r", replace(cfg, ssd_backend="triton"))
    distill(*args, tmp_path / "r", cfg, stop_after=1)
    distill(*args, tmp_path / "r", replace(cfg, ssd_backend="torch"))  # a kernel choice, not a run setting
    student = prepare(*args, tmp_path / "r", replace(cfg, ssd_backend="torch"), progress=False).student
    assert {m.mixer.cfg.ssd_backend for m in student.layers if hasattr(m.mixer.cfg, "ssd_backend")} == {"torch"}


def test_mixer_groups_cover_every_parameter_and_a_new_one_trains(setup):
    root, _, _ = setup
    student = load_checkpoint(root / "student")
    mixer = student.layers[0].mixer
    mixer.extra_scale = torch.nn.Parameter(torch.ones(3))  # a parameter the stages have never heard of
    groups = mixer.parameter_groups()
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, _ in mixer.named_parameters())  # each exactly once
    assert "extra_scale" in groups["new_ssm"]
    assert "layers.0.mixer.extra_scale" in {n for n, _ in select_trainable(student, STAGES[1])}


def test_auto_keep_turns_the_worst_layers_back_into_teacher_attention(setup):
    from mmmamba.distill.auto_keep import apply_auto_keep, layer_error_means

    root, teacher, batch = setup
    student = load_checkpoint(root / "student")
    student.config.conversion["auto_keep"] = 1
    errors = layer_error_means(teacher, student, [batch])
    assert set(errors) == {0, 2}  # the Mamba-2 layers
    worst = max(errors, key=errors.get)
    assert apply_auto_keep(teacher, student, [batch]) == [worst]
    assert student.config.mixers[worst] == "attention" and student.config.conversion["keep_attention"] == sorted(
        [1, worst]
    )
    for (n, a), b in zip(
        student.layers[worst].mixer.state_dict().items(), teacher.layers[worst].mixer.state_dict().values()
    ):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), n  # a copy, not the teacher's storage
    assert apply_auto_keep(teacher, student, [batch]) is None  # done once
    assert not any(f"layers.{worst}." in n for n, _ in select_trainable(student, STAGES[3]))


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_sliced_kl_equals_the_whole_batch_kl_with_gradients(monkeypatch, chunk):
    """masked_kl's slices (recomputed in backward) give the whole-batch KL and its gradient: equal to the
    float64 formula (float64 logits stay float64; bf16 ones are widened to float32), and per token
    bit-equal across slicings."""
    import torch.nn.functional as F

    from mmmamba.training import losses

    g = torch.Generator().manual_seed(3)
    t = torch.randn(3, 11, 29, generator=g, dtype=torch.float64)
    s = torch.randn(3, 11, 29, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 11, generator=g) > 0.3
    monkeypatch.setattr(losses, "KL_CHUNK_TOKENS", chunk)
    got = masked_kl(t, s, mask, 1.5)
    (got_grad,) = torch.autograd.grad(got, s)
    lt, ls = F.log_softmax(t / 1.5, -1), F.log_softmax(s / 1.5, -1)
    want = ((lt.exp() * (lt - ls)).sum(-1) * mask).sum() / mask.sum() * 1.5**2
    (want_grad,) = torch.autograd.grad(want, s)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-14)
    monkeypatch.setattr(losses, "KL_CHUNK_TOKENS", 1 << 20)
    assert torch.equal(masked_kl(t, s, mask, 1.5), got)
    assert torch.equal(masked_kl(t.flatten(0, 1), s.flatten(0, 1), mask.flatten(), 1.5), got)  # (N, V) rows


def test_auto_keep_relative_rank_divides_each_error_by_its_teacher_output_size(setup):
    from mmmamba.distill.auto_keep import keep_hardest_as_attention, layer_error_means
    from mmmamba.distill.losses import teacher_layer_io

    root, teacher, batch = setup
    loud = load_checkpoint(root / "teacher").double()  # layer 2 writes 30× larger outputs: its raw MSE grows ~900×
    with torch.no_grad():
        loud.layers[2].mixer.v_proj.weight.mul_(30.0)
    student = load_checkpoint(root / "student").double()
    errors = layer_error_means(loud, student, [batch])
    outputs = teacher_layer_io(loud, batch).mixer_outputs
    real = batch.attention_mask.bool()
    power = {i: float(outputs[i].double().pow(2).mean(-1)[real].mean()) for i in errors}  # the plain definition
    want_relative = max(errors, key=lambda i: errors[i] / power[i])
    assert max(errors, key=errors.get) == 2 != want_relative  # raw follows the output size; relative does not

    by_error, by_relative = load_checkpoint(root / "student").double(), load_checkpoint(root / "student").double()
    assert keep_hardest_as_attention(loud, by_error, [batch], 1) == [2]
    assert keep_hardest_as_attention(loud, by_relative, [batch], 1, rank="relative") == [want_relative]
    conv = by_relative.config.conversion
    assert conv["auto_rank"] == "relative" and conv["keep_attention"] == sorted([1, want_relative])
    for i in errors:
        assert conv["auto_relative_errors"][str(i)] == pytest.approx(errors[i] / power[i], rel=1e-5)  # fp32 MSE
    with pytest.raises(MmmambaError, match="rank"):
        keep_hardest_as_attention(loud, load_checkpoint(root / "student"), [batch], 1, rank="size")


def test_val_limit_sets_how_many_val_samples_each_validation_scores(setup, tmp_path):
    """``distill --val-limit N``: at most N val samples a folder (each costs a teacher and a student forward)."""
    import json

    from mmmamba.cli.main import main

    root, _, _ = setup
    args = (root / "teacher", root / "student", root / "data")
    counted = {}
    for limit in (2, 128):
        val = prepare(*args, tmp_path / "p", DistillConfig(batch_size=2, val_limit=limit), progress=False).val
        counted[limit] = sum(b.input_ids.shape[0] for b in val)
    assert counted[2] == 2 and counted[128] > 2
    argv = ["distill", "--teacher", str(args[0]), "--student", str(args[1]), "--data", str(args[2])]
    argv += ["--out", str(tmp_path / "r"), "--stages", "1", "--steps-per-stage", "1", "--batch-size", "2"]
    argv += ["--val-limit", "3"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "r" / "distill_config.json").read_text())["val_limit"] == 3
