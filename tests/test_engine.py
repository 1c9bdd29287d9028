"""Training engine: determinism, kill/resume, multi-process equivalence, non-finite losses, logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, tiny_args
from helpers import QUIET, assert_same_weights, sdd_config, weights
from sddcompress.engine.checkpoint import load_checkpoint
from sddcompress.engine.config import TrainConfig, build_config, read_config_file, shipped_configs
from sddcompress.engine.trainer import NonFiniteLoss, run
from sddcompress.errors import UserError

def test_same_seed_same_weights_and_seed_matters(tmp_path, teacher_ckpt):
    a = run(sdd_config(tmp_path / "a", teacher_ckpt), **QUIET)
    b = run(sdd_config(tmp_path / "b", teacher_ckpt), **QUIET)
    c = run(sdd_config(tmp_path / "c", teacher_ckpt, seed=1), **QUIET)
    assert_same_weights(a.latest, b.latest)
    with pytest.raises(AssertionError):
        assert_same_weights(a.latest, c.latest)


def test_checkpoint_contents_and_metrics_files(tmp_path, teacher_ckpt):
    result = run(sdd_config(tmp_path / "r", teacher_ckpt, epochs=2), **QUIET)
    ckpt = load_checkpoint(result.latest)
    for key in ("model", "optimizer", "scheduler", "rng", "epoch", "config", "class_names", "normalization",
                "sddcompress_version", "method"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 2 and ckpt["step_in_epoch"] == 0 and len(ckpt["class_names"]) == 10
    records = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for term in ("train_ce", "train_tckd", "train_nckd", "train_distill", "train_loss", "val_top1"):
        assert term in records[0], term
    header = (result.out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train_nckd" in header and "val_top5" in header
    assert not list((result.out / "checkpoints").glob(".*.tmp*"))


def test_rerunning_a_finished_run_continues_to_more_epochs(tmp_path, teacher_ckpt):
    full = run(sdd_config(tmp_path / "full", teacher_ckpt, epochs=2), **QUIET)
    run(sdd_config(tmp_path / "split", teacher_ckpt, epochs=1), **QUIET)
    resumed = run(sdd_config(tmp_path / "split", teacher_ckpt, epochs=2), **QUIET)
    assert_same_weights(full.latest, resumed.latest)


def test_a_student_with_a_dropout_head_continues_to_more_epochs(tmp_path, teacher_ckpt):
    """torchvision's MobileNetV2 ends in Dropout + Linear: once its weights are trained, the SDD split check
    must still hold when the run is picked up again."""
    over = dict(model="mobilenetv2", scales=(1, 2), lr=0.2)
    full = run(sdd_config(tmp_path / "full", teacher_ckpt, epochs=2, **over), **QUIET)
    run(sdd_config(tmp_path / "split", teacher_ckpt, epochs=1, **over), **QUIET)
    resumed = run(sdd_config(tmp_path / "split", teacher_ckpt, epochs=2, **over), **QUIET)
    assert_same_weights(full.latest, resumed.latest)


def test_resume_refuses_a_different_run(tmp_path, teacher_ckpt):
    run(sdd_config(tmp_path / "r", teacher_ckpt), **QUIET)
    with pytest.raises(UserError, match="holds a run with method='sdd-dkd'"):
        run(sdd_config(tmp_path / "r", teacher_ckpt, method="kd"), **QUIET)


class _NanAfter:
    """An objective wrapper that returns a NaN loss from call `n` on."""

    def __init__(self, inner, n):
        self.inner, self.n, self.calls = inner, n, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        out = self.inner(*args, **kwargs)
        if self.calls >= self.n:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, teacher_ckpt, monkeypatch):
    import sddcompress.engine.trainer as trainer

    real = trainer.Objective
    monkeypatch.setattr(trainer, "Objective", lambda m, **k: _NanAfter(real(m, **k), 6))  # epoch 2, batch 2
    with pytest.raises(NonFiniteLoss, match="epoch 2 batch 2.*last good checkpoint is intact"):
        run(sdd_config(tmp_path / "r", teacher_ckpt, epochs=3), **QUIET)
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoints" / "latest.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"]["state_dict"].values() if v.is_floating_point())


def test_skip_nonfinite_skips_bad_steps(tmp_path, teacher_ckpt, monkeypatch):
    import sddcompress.engine.trainer as trainer

    real = trainer.Objective

    class OneBad(_NanAfter):
        def __call__(self, *a, **k):
            out = super().__call__(*a, **k)
            self.n = 10**9 if self.calls >= 3 else self.n  # only call 3 is NaN
            return out

    monkeypatch.setattr(trainer, "Objective", lambda m, **k: OneBad(real(m, **k), 3))
    messages = []
    result = run(sdd_config(tmp_path / "r", teacher_ckpt, skip_nonfinite=1), echo=messages.append)
    assert any("skipped non-finite loss" in m for m in messages)
    assert all(torch.isfinite(v).all() for v in weights(result.latest).values() if v.is_floating_point())


def test_config_file_and_command_line_precedence(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("student: resnet8x4\nlr: 0.01\nepochs: 7\nscales: [1, 2]\n")
    file_values = read_config_file(str(cfg))
    built = build_config(file_values, {"lr": 0.2, "epochs": 240, "model": "resnet20"}, cli_given={"lr"})
    assert (built.model, built.lr, built.epochs, built.scales) == ("resnet8x4", 0.2, 7, "1,2")


OFFICIAL_BETA = {"resnet56_resnet20": 2, "resnet110_resnet32": 2, "wrn_40_2_wrn_16_2": 6, "wrn_40_2_wrn_40_1": 6,
                 "vgg13_vgg8": 6, "vgg13_mobilenetv2": 6}


@pytest.mark.parametrize("name", [n for n in shipped_configs() if n.startswith("cifar100_")])
def test_shipped_paper_configs(name):
    cfg = build_config(read_config_file(name), {}, set())
    assert (cfg.epochs, cfg.batch_size, cfg.milestones, cfg.weight_decay, cfg.method) == (
        240, 64, [150, 180, 210], 5e-4, "sdd-dkd")
    small = cfg.model in ("mobilenetv2", "shufflenetv1", "shufflenetv2", "mobile_half", "shufflev1_paper", "shufflev2_paper")
    assert cfg.lr == (0.01 if small else 0.05)
    assert cfg.out == f"runs/{cfg.model}-from-{cfg.teacher}-sdd-dkd-cifar100"
    pair = name[len("cifar100_"):]
    assert cfg.beta == OFFICIAL_BETA.get(pair, 8) and cfg.clip_grad_norm == 40 and cfg.workers is None
    # vgg8: the SDD run scripts; mobile_half ends on a 2x2 map at 32 px
    assert cfg.scales == ("1,2" if pair == "vgg13_vgg8" or cfg.model == "mobile_half" else "1,2,4")


def test_imagenet_config_is_sdds_recipe():
    cfg = build_config(read_config_file("imagenet_resnet34_resnet18"), {}, set())
    assert (cfg.teacher, cfg.model, cfg.batch_size, cfg.epochs, cfg.lr, cfg.milestones, cfg.weight_decay) == (
        "resnet34", "resnet18", 256, 100, 0.2, [30, 60, 90], 1e-4)
    assert (cfg.temperature, cfg.beta, cfg.warmup_epochs, cfg.input_size) == (1, 0.5, 1, 224)


@pytest.mark.parametrize("scales", ["2,4", "4,2,1", "1,4,2", "1,2,2"])
def test_scales_must_start_with_1_and_ascend(tmp_path, scales):
    with pytest.raises(UserError, match="start with 1 and be strictly ascending"):
        run(TrainConfig(**{**TINY, "method": "sdd-kd", "scales": scales, "out": str(tmp_path / "r")}), **QUIET)


def test_paper_pairs_are_shipped():
    names = set(shipped_configs())
    for pair in ("resnet32x4_resnet8x4", "resnet50_mobilenetv2", "wrn_40_2_wrn_16_2", "vgg13_vgg8"):
        assert f"cifar100_{pair}" in names


def _cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sddcompress.cli.main", *args]


def _distill_args(out: Path, teacher_ckpt: str, epochs: int = 3) -> list[str]:
    return ["distill", "--teacher", "resnet20", "--teacher-ckpt", teacher_ckpt, "--student", "resnet20",
            "--warmup-epochs", "1", "--out", str(out),
            *tiny_args(epochs=epochs, max_train_batches=12, batch_size=16, log_every=1)]


def _start_and_stop_mid_epoch(cmd: list[str], sig: int, group: bool = False) -> int:
    """Start the run, wait for the 2nd epoch's 5th batch, send `sig` (to its whole process group with `group`);
    return the exit code."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=group)
    deadline = time.time() + 300
    for line in proc.stdout:
        if "epoch 2/3 batch 5/12" in line:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            break
        assert time.time() < deadline, "run never reached epoch 2"
    proc.stdout.read()
    return proc.wait(timeout=120)


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path, teacher_ckpt):
    reference = tmp_path / "reference"
    subprocess.run(_cli_cmd(*_distill_args(reference, teacher_ckpt)), check=True, capture_output=True)
    killed = tmp_path / "killed"
    assert _start_and_stop_mid_epoch(_cli_cmd(*_distill_args(killed, teacher_ckpt)), signal.SIGKILL) == -9
    assert load_checkpoint(killed / "checkpoints" / "latest.pt")["epoch"] == 1
    resumed = subprocess.run(_cli_cmd(*_distill_args(killed, teacher_ckpt)), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert_same_weights(reference / "checkpoints" / "latest.pt", killed / "checkpoints" / "latest.pt")


def test_sigterm_saves_mid_epoch_and_resume_gives_identical_weights(tmp_path, teacher_ckpt):
    reference = tmp_path / "reference"
    subprocess.run(_cli_cmd(*_distill_args(reference, teacher_ckpt)), check=True, capture_output=True)
    stopped = tmp_path / "stopped"
    assert _start_and_stop_mid_epoch(_cli_cmd(*_distill_args(stopped, teacher_ckpt)), signal.SIGTERM) == 130
    mid = load_checkpoint(stopped / "checkpoints" / "latest.pt")
    assert mid["epoch"] == 1 and mid["step_in_epoch"] >= 5
    resumed = subprocess.run(_cli_cmd(*_distill_args(stopped, teacher_ckpt)), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(reference / "checkpoints" / "latest.pt", stopped / "checkpoints" / "latest.pt")
    lines = (stopped / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_sigterm_to_the_process_group_with_loader_workers_still_saves_mid_epoch(tmp_path, teacher_ckpt):
    """Workers run in their own process groups: the signal reaches the training process alone, which
    checkpoints at a step and exits 130."""
    stopped = tmp_path / "stopped"
    cmd = _cli_cmd(*_distill_args(stopped, teacher_ckpt), "--workers", "1")
    assert _start_and_stop_mid_epoch(cmd, signal.SIGTERM, group=True) == 130
    mid = load_checkpoint(stopped / "checkpoints" / "latest.pt")
    assert mid["epoch"] == 1 and mid["step_in_epoch"] >= 5


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# a two-process run that hangs (a process group that cannot be torn down) fails its test, not the suite
TWO_PROCESS_TIMEOUT_S = 300


def _run_two_processes(args: list[str]) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node 2 ARGS` with one thread each. Past the timeout the
    launcher is terminated, which stops its workers (they run in sessions of their own, so killing the
    launcher alone would leave them behind), and the test fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        out, err = proc.communicate(timeout=TWO_PROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"two-process run still running after {TWO_PROCESS_TIMEOUT_S} s: {err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _train_two_ways(tmp_path, args: list[str], float64: bool = False) -> tuple[Path, Path]:
    """The same run as one process and as two CPU processes (same global batch); returns both latest.pt.
    With `float64`, both run with float64 models. tests/checked_cli.py fails a run that returns with
    its process group alive."""
    entry = [str(Path(__file__).with_name("checked_cli.py")), *(["--float64"] if float64 else [])]
    one = subprocess.run([sys.executable, *entry, *args, "--out", str(tmp_path / "one")], capture_output=True,
                         text=True)
    assert one.returncode == 0, one.stderr
    two = _run_two_processes(["--master_port", str(_free_port()), *entry, *args, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    latest_two = tmp_path / "two" / "checkpoints" / "latest.pt"
    assert len(load_checkpoint(latest_two)["rng"]) == 2  # really ran as two processes
    return tmp_path / "one" / "checkpoints" / "latest.pt", latest_two


def test_two_cpu_processes_give_the_gradients_of_one_process(tmp_path, teacher_ckpt):
    # One SGD step at lr 1 from the same initial weights: w1 = w0 - (g + wd * w0), so the weight
    # difference between the two runs IS the gradient difference. SDD-DKD with the teacher, local
    # logits and cross-process batch norm; one step, so float-order noise cannot be amplified.
    args = ["distill", "--teacher", "resnet20", "--teacher-ckpt", teacher_ckpt, "--student", "resnet20",
            "--warmup-epochs", "1", *tiny_args(epochs=1, max_train_batches=1, batch_size=16, lr=1.0)]
    one, two = _train_two_ways(tmp_path, args)
    assert_same_weights(one, two, atol=3e-5)  # float32 sum-order noise, x128 (beta T^2)


def test_the_prepared_student_is_freed_before_the_process_group_is_destroyed(tmp_path, monkeypatch):
    """In a multi-process run the prepared (DDP) student holds the process group; destroyed inside the
    student's deallocation, gloo's group can hang the process (its worker thread waits for the GIL the
    deallocation holds). So the run frees the prepared modules before `end_training` destroys the group."""
    import weakref

    from accelerate import Accelerator

    from sddcompress.engine import trainer

    prepared, alive_at_end = [], []
    real_setup = trainer.setup

    def recording_setup(*args, **kwargs):
        session = real_setup(*args, **kwargs)
        prepared.append(weakref.ref(session.student_p))
        return session

    def recording_end(self):
        alive_at_end.append(prepared[0]() is not None)

    monkeypatch.setattr(trainer, "setup", recording_setup)
    monkeypatch.setattr(Accelerator, "end_training", recording_end)
    run(TrainConfig(**TINY, model="resnet20", out=str(tmp_path / "r")), **QUIET)
    assert alive_at_end == [False]


def test_two_cpu_processes_match_one_process_over_tame_steps(tmp_path):
    # Four steps over an epoch boundary (scheduler, sampler re-seeding) with a tame loss (CE, lr 0.01),
    # in float64. In float32 the comparison measures chaos, not errors: summation-order rounding
    # (8 vs 16 images per conv, thread count, oneDNN's ISA) leaves the weights ~1e-7 apart, 20
    # batch-norm layers move pre-ReLU activations by ~5e-5, and once one of the ~750k ReLU inputs
    # (the nearest sit ~3e-6 from 0) changes side, that step's exact gradient moves by 5-7%: the
    # weights then differ by 4e-5 (one process, 1 vs 2 threads) to 2.4e-3 (one vs two processes) on
    # an AVX-512 CPU, as large as a real error. In float64 the two runs differ by 1e-14; rank 1
    # drawing epoch 2's shard from the wrong permutation moves them by 2.8e-2.
    args = ["train", "--model", "resnet20", *tiny_args(epochs=2, max_train_batches=2, batch_size=16, lr=0.01)]
    one, two = _train_two_ways(tmp_path, args, float64=True)
    assert_same_weights(one, two, atol=1e-9)


def _without_batchnorm(build):
    """build_model with GroupNorm in place of BatchNorm: batch statistics over B/2 are not those over B."""
    def swap(module: torch.nn.Module) -> torch.nn.Module:
        for name, child in module.named_children():
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(module, name, torch.nn.GroupNorm(1, child.num_features))
            else:
                swap(child)
        return module
    return lambda *a, **k: swap(build(*a, **k))


def test_gradient_accumulation_2_x_half_batch_equals_full_batch(tmp_path, monkeypatch):
    import sddcompress.engine.trainer as trainer

    monkeypatch.setattr(trainer, "build_model", _without_batchnorm(trainer.build_model))
    common = {**TINY, "model": "resnet20", "method": "ce", "max_train_batches": 2, "lr": 1.0}
    # one optimiser step at lr 1: the weight difference is the gradient difference
    full = run(TrainConfig(**{**common, "max_train_batches": 1}, out=str(tmp_path / "full")), **QUIET)
    accum = run(TrainConfig(**common, grad_accum=2, out=str(tmp_path / "accum")), **QUIET)
    assert_same_weights(full.latest, accum.latest, atol=2e-6)
    with pytest.raises(AssertionError):  # and the comparison can fail: a different batch differs
        other = run(TrainConfig(**{**common, "max_train_batches": 1}, seed=1, out=str(tmp_path / "o")), **QUIET)
        assert_same_weights(full.latest, other.latest, atol=2e-6)


def test_bf16_autocast_runs_on_cpu(tmp_path, teacher_ckpt, monkeypatch):
    import sddcompress.engine.trainer as trainer

    build, dtypes = trainer.build_model, []

    def recording(*a, **k):  # the dtype of the raw networks' outputs (Accelerate returns float32 logits)
        net = build(*a, **k)
        net.register_forward_hook(lambda module, inputs, out: dtypes.append(out.dtype) if module.training else None)
        return net

    monkeypatch.setattr(trainer, "build_model", recording)
    result = run(sdd_config(tmp_path / "r", teacher_ckpt, precision="bf16"), **QUIET)
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert all(torch.isfinite(v).all() for v in weights(result.latest).values() if v.is_floating_point())
    assert all(r["train_loss"] == r["train_loss"] for r in result.history)  # not NaN


def test_loader_workers_do_not_change_the_weights(tmp_path, teacher_ckpt):
    zero = run(sdd_config(tmp_path / "w0", teacher_ckpt, workers=0, pipeline="loader"), **QUIET)
    two = run(sdd_config(tmp_path / "w2", teacher_ckpt, workers=2, pipeline="loader"), **QUIET)
    assert_same_weights(zero.latest, two.latest)


def test_weights_preprocessing_renormalises_the_small_image_augmentation():
    from sddcompress.data import load_dataset
    from sddcompress.data.preprocessing import preprocessed_as, small_image_preprocessing

    bundle = load_dataset("digits", input_size=16)
    other = preprocessed_as(bundle, small_image_preprocessing(16, (0.5,) * 3, (0.25,) * 3))
    assert (other.train_transform.mean, other.train_transform.std) == ((0.5,) * 3, (0.25,) * 3)
    image = bundle.train[0][0]
    a, b = bundle.train_transform.seeded(image, 0, 0, 0), other.train_transform.seeded(image, 0, 0, 0)
    mean, std = bundle.mean[0], bundle.std[0]
    assert torch.allclose((a * std + mean - 0.5) / 0.25, b, atol=1e-5)


def test_crop_flip_is_one_function_of_seed_epoch_index():
    from sddcompress.data.augment import crop_flip, crop_flip_params

    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    dy, dx, flip = crop_flip_params(3, 2, [5, 9, 0, 7, 5, 1], pad=2, flip=True)
    again = crop_flip_params(3, 2, [1, 5], pad=2, flip=True)  # another batch, another order
    assert (again[0][1], again[1][1], again[2][1]) == (dy[0], dx[0], flip[0])
    assert not torch.equal(crop_flip_params(3, 3, [5, 9, 0, 7, 5, 1], 2, True)[0], dy)  # epoch matters
    batch = crop_flip(images, dy, dx, flip, 2)  # the device pipeline's batched call ...
    for i in range(6):  # ... equals the PIL pipeline's one-image call
        one = crop_flip(images[i:i + 1], dy[i:i + 1], dx[i:i + 1], flip[i:i + 1], 2)
        assert torch.equal(batch[i:i + 1], one)
    plain = crop_flip(images[:1], torch.tensor([2]), torch.tensor([2]), torch.tensor([True]), 2)
    assert torch.equal(plain, images[:1].flip(3))  # centre window, mirrored


def test_image_folder_with_mixed_sizes_trains_at_any_input_size(tmp_path):
    from PIL import Image

    from sddcompress.data import load_dataset

    for split in ("train", "val"):
        for c, cls in enumerate(("a", "b")):
            (tmp_path / "img" / split / cls).mkdir(parents=True)
            for i, (w, h) in enumerate([(20, 30), (64, 64), (30, 20), (40, 50)]):
                Image.new("RGB", (w, h), (40 * c + 10 * i, 80, 120)).save(tmp_path / "img" / split / cls / f"{i}.png")
    bundle = load_dataset(f"imagefolder:{tmp_path / 'img'}", input_size=32)
    assert {tuple(bundle.val_transform(bundle.val[i][0]).shape) for i in range(len(bundle.val))} == {(3, 32, 32)}
    result = run(TrainConfig(model="resnet20", data=f"imagefolder:{tmp_path / 'img'}", input_size=32, epochs=1,
                             batch_size=4, cpu=True, workers=0, out=str(tmp_path / "r")), **QUIET)
    assert load_checkpoint(result.latest)["input_size"] == 32


def test_a_run_resumed_with_another_process_count_continues(tmp_path):
    # Epoch 1 as one process, epoch 2 resumed as two: the weights of an uninterrupted one-process run
    # (tame CE steps as above). Order and augmentation depend only on (seed, epoch, index), the split
    # across processes only on the global batch, and batch norm sums its statistics across processes.
    common = {**TINY, "model": "resnet20", "max_train_batches": 2, "batch_size": 16, "lr": 0.01}
    reference = run(TrainConfig(**{**common, "epochs": 2}, out=str(tmp_path / "reference")), **QUIET)
    run(TrainConfig(**common, out=str(tmp_path / "switched")), **QUIET)
    args = ["train", "--model", "resnet20", *tiny_args(epochs=2, max_train_batches=2, batch_size=16, lr=0.01),
            "--out", str(tmp_path / "switched")]
    two = _run_two_processes(["--master_port", str(_free_port()), "-m", "sddcompress.cli.main", *args])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "resuming" in two.stdout
    latest = tmp_path / "switched" / "checkpoints" / "latest.pt"
    assert load_checkpoint(latest)["epoch"] == 2 and len(load_checkpoint(latest)["rng"]) == 2
    assert_same_weights(reference.latest, latest, atol=1e-4)


def test_eval_command_scores_with_the_training_evaluation(tmp_path, teacher_ckpt):
    from sddcompress.engine.checkpoint_eval import evaluate_checkpoint

    result = run(sdd_config(tmp_path / "r", teacher_ckpt), **QUIET)
    scored = evaluate_checkpoint(str(result.latest), None, None, None, None, batch_size=64)
    assert (scored["count"], scored["top1"], scored["top5"]) == (
        result.final["count"], result.final["top1"], result.final["top5"])
    assert scored["loss"] == pytest.approx(result.final["loss"], rel=1e-6)
