"""Faults around a run: concurrent runs, kills inside a checkpoint write, read-only and full disks,
signals before the loop, changed options on resume, weights that turn non-finite."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_args

TRAIN = ["train", "--model", "resnet20", *tiny_args(max_train_batches=2)]


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _epochs(out: Path) -> tuple[list[int], list[int]]:
    jsonl = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    csv_rows = (out / "metrics.csv").read_text().splitlines()[1:]
    return jsonl, [int(r.split(",")[0]) for r in csv_rows]


def _cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sddcompress.cli.main", *args]


def test_a_second_run_into_the_same_folder_is_refused_naming_the_holder(cli, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(_cli_cmd(*TRAIN, "--epochs", "1000", "--out", str(out)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        lock, deadline = out / ".run.lock", time.time() + 120
        while not (lock.exists() and lock.read_text().strip()):
            assert holder.poll() is None, holder.stderr.read()
            assert time.time() < deadline, "the first run never took the lock"
            time.sleep(0.1)
        code, _, err = cli(*TRAIN, "--out", str(out))
        assert code == 2
        assert f"is in use by another run (PID {holder.pid})" in _one_error_line(err)
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.communicate(timeout=120)
    assert holder.returncode in (130, 0)
    code, out_text, err = cli(*TRAIN, "--out", str(out), "--fresh")  # the lock is free again
    assert code == 0, err


def test_a_stale_lock_from_a_dead_process_is_taken_over(cli, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "run"
    out.mkdir()
    (out / ".run.lock").write_text(dead.stdout)
    code, stdout, err = cli(*TRAIN, "--out", str(out))
    assert code == 0, err
    assert f"took over the lock of '{out}' from PID {dead.stdout.strip()} (no longer running)" in stdout
    assert (out / ".run.lock").read_text() == ""  # released


_DIE_IN_FIRST_SAVE = """
import os, signal, sys
real_replace = os.replace
def die_before_rename(src, dst):
    if "/.latest." in str(src):   # the temp file is written and fsynced; the rename never happens
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)
os.replace = die_before_rename
from sddcompress.cli.main import main
main(sys.argv[1:])
"""


def test_a_kill_inside_the_first_checkpoint_write_leaves_no_orphan_and_no_duplicate_rows(cli, tmp_path):
    out = tmp_path / "run"
    args = [*TRAIN, "--epochs", "2", "--out", str(out)]
    killed = subprocess.run([sys.executable, "-c", _DIE_IN_FIRST_SAVE, *args], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL
    assert list((out / "checkpoints").glob(".latest.*.tmp.pt")), "the kill should have left a temp file"
    assert not (out / "checkpoints" / "latest.pt").exists()
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert "removed 1 temporary file" in stdout
    assert not list((out / "checkpoints").glob(".*.tmp*"))
    assert _epochs(out) == ([1, 2], [1, 2])


def test_metrics_are_truncated_to_the_checkpoint_and_a_lost_row_is_restored(cli, tmp_path):
    out = tmp_path / "run"
    args = [*TRAIN, "--epochs", "2", "--out", str(out)]
    assert cli(*args)[0] == 0
    rows = (out / "metrics.jsonl").read_text().splitlines()
    # as if killed after saving epoch 2's checkpoint but before logging it, with a stray future row
    (out / "metrics.jsonl").write_text(rows[0] + "\n" + json.dumps({**json.loads(rows[0]), "epoch": 7}) + "\n")
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    (out / "metrics.csv").write_text("\n".join(csv_lines[:2]) + "\n")
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert "already complete" in stdout
    assert _epochs(out) == ([1, 2], [1, 2])


def test_a_folder_that_turns_read_only_mid_run_is_one_line(cli, tmp_path, monkeypatch):
    import sddcompress.engine.checkpoint as checkpoint

    def read_only(path, write, **kwargs):  # the checkpoint's temp file cannot be created
        raise OSError(errno.EROFS, "Read-only file system", str(path.parent))

    monkeypatch.setattr(checkpoint, "atomic_write", read_only)
    code, _, err = cli(*TRAIN, "--out", str(tmp_path / "run"))
    line = _one_error_line(err)
    assert code == 1
    assert "cannot save checkpoint" in line and "read-only" in line and "re-running the command resumes" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_one_line(cli, tmp_path):
    out = tmp_path / "run"
    assert cli(*TRAIN, "--out", str(out))[0] == 0
    out.chmod(0o555)
    try:
        code, _, err = cli(*TRAIN, "--out", str(out), "--epochs", "2")
    finally:
        out.chmod(0o755)
    assert code != 0 and "not writable" in _one_error_line(err)


def _small_file_limit() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))


def test_a_full_disk_is_one_line_and_leaves_no_temp_file(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(_cli_cmd(*TRAIN, "--out", str(out)), capture_output=True, text=True,
                          preexec_fn=_small_file_limit)
    line = _one_error_line(done.stderr)
    assert done.returncode == 1, done.stderr
    assert "cannot save checkpoint" in line and "file-size limit" in line
    assert not list((out / "checkpoints").glob(".*.tmp*"))
    assert not (out / "checkpoints" / "latest.pt").exists()


def test_sigterm_before_the_training_loop_gives_the_promised_message(cli, tmp_path, monkeypatch):
    import sddcompress.engine.trainer as trainer

    real_load = trainer.load_dataset

    def load_then_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(trainer, "load_dataset", load_then_sigterm)
    code, _, err = cli(*TRAIN, "--out", str(tmp_path / "run"))
    assert code == 130
    assert "interrupted (SIGTERM) before training started" in err and "run the same command again" in err
    assert "Traceback" not in err


def test_resuming_with_a_changed_lr_is_refused_and_more_epochs_are_stated(cli, tmp_path):
    out = tmp_path / "run"
    assert cli(*TRAIN, "--out", str(out))[0] == 0
    code, _, err = cli(*TRAIN, "--out", str(out), "--lr", "0.1", "--momentum", "0.5")
    line = _one_error_line(err)
    assert code == 2
    assert "holds a run started with lr=0.05, momentum=0.9; this command asks for lr=0.1, momentum=0.5" in line
    code, stdout, err = cli(*TRAIN, "--out", str(out), "--epochs", "2")
    assert code == 0, err
    assert "resuming with --epochs 2 (the run was started with 1)" in stdout


def test_weights_that_turn_non_finite_are_never_saved(cli, tmp_path, monkeypatch):
    import sddcompress.engine.trainer as trainer

    class PoisonedSGD(torch.optim.SGD):
        """A finite loss, then an optimiser step that leaves a NaN in the weights."""

        def step(self, closure=None):
            result = super().step(closure)
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
            return result

    monkeypatch.setattr(trainer.torch.optim, "SGD", PoisonedSGD)
    out = tmp_path / "run"
    code, _, err = cli(*TRAIN, "--out", str(out), "--skip-nonfinite", "5")
    assert code == 3
    assert "weights became non-finite" in _one_error_line(err)
    assert not list((out / "checkpoints").glob("*.pt")) if (out / "checkpoints").exists() else True


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _folder_of(files: dict[str, bytes | str], root: Path) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return root


_RECORD = '{"epoch": 3, "val_top1": 91.5}\n'
# (id, the folder's files before, extra options, phrase of the one error line)
_NOT_OURS = [
    ("foreign-checkpoints-fresh", {"checkpoints/precious.bin": b"\x00\x01weights"}, ["--fresh"],
     "is not an sddcompress run and is not empty (checkpoints/precious.bin)"),
    ("foreign-checkpoints", {"checkpoints/precious.bin": b"\x00\x01weights"}, [], "pass another --out"),
    ("foreign-metrics", {"metrics.jsonl": _RECORD, "metrics.csv": "epoch,val_top1\n3,91.5\n"}, [],
     "(metrics.csv, metrics.jsonl)"),
    ("foreign-metrics-fresh", {"metrics.jsonl": _RECORD, "notes.txt": "mine"}, ["--fresh"], "nothing was changed"),
    ("latest-not-a-checkpoint-fresh", {"checkpoints/latest.pt": b"not torch", "checkpoints/best.pt": b"x"},
     ["--fresh"], "(checkpoints/best.pt, checkpoints/latest.pt)"),
    ("marker-not-ours-fresh", {".sddcompress-run": "[1, 2]", "checkpoints/latest.pt": b"mine"}, ["--fresh"],
     "is not a run marker sddcompress wrote"),
]


@pytest.mark.parametrize("files, extra, phrase", [c[1:] for c in _NOT_OURS], ids=[c[0] for c in _NOT_OURS])
def test_a_folder_that_is_not_a_run_is_refused_and_left_byte_identical(cli, tmp_path, files, extra, phrase):
    out = _folder_of(files, tmp_path / "userproj")
    before = _files(out)
    code, _, err = cli(*TRAIN, "--out", str(out), *extra)
    assert code == 2
    assert phrase in _one_error_line(err)
    assert _files(out) == before  # nothing deleted, overwritten or added (no lock, no marker)
    assert sorted(p.name for p in out.iterdir()) == sorted({n.split("/")[0] for n in files})


@pytest.mark.parametrize("out_value", ["", "  "])
def test_an_empty_out_is_refused_and_the_current_folder_is_untouched(cli, tmp_path, monkeypatch, out_value):
    cwd = _folder_of({"checkpoints/keep.txt": "keep", "metrics.jsonl": _RECORD}, tmp_path / "cwd")
    monkeypatch.chdir(cwd)
    before = _files(cwd)
    code, _, err = cli(*TRAIN, "--out", out_value, "--fresh")
    assert code == 2
    assert "--out is empty" in _one_error_line(err)
    assert _files(cwd) == before


def test_fresh_removes_only_what_a_run_wrote_with_or_without_the_marker(cli, tmp_path):
    out = tmp_path / "run"
    assert cli(*TRAIN, "--out", str(out))[0] == 0
    assert json.loads((out / ".sddcompress-run").read_text())["format"] == "sddcompress-run-v1"
    user = {"checkpoints/precious.bin": b"\x00\x01weights", "notes.txt": b"mine", "extra/plot.png": b"\x89PNG"}
    _folder_of(user, out)
    old_latest = (out / "checkpoints" / "latest.pt").read_bytes()

    code, _, err = cli(*TRAIN, "--out", str(out), "--fresh", "--seed", "1")  # a marked run
    assert code == 0, err
    assert {k: v for k, v in _files(out).items() if k in user} == user
    assert (out / "checkpoints" / "latest.pt").read_bytes() != old_latest
    assert _epochs(out) == ([1], [1])

    # a run written before runs were marked: recognised by its checkpoint, marked, and the same holds
    (out / ".sddcompress-run").unlink()
    code, _, err = cli(*TRAIN, "--out", str(out), "--fresh", "--seed", "2")
    assert code == 0, err
    assert {k: v for k, v in _files(out).items() if k in user} == user
    assert (out / ".sddcompress-run").is_file()
    assert _epochs(out) == ([1], [1])


# (id, metrics.jsonl of a run, the error its row in `sddcompress runs` carries)
_DAMAGED_METRICS = [
    ("not-json", "this is not json\n", "metrics.jsonl line 1 is not JSON"),
    ("string-top1", '{"epoch": 1, "val_top1": "91.5"}\n', "line 1 is not a metrics record"),
    ("not-objects", '{"epoch": 1, "val_top1": 50.0}\n[1, 2]\n"text"\n', "line 2 is not a metrics record"),
    ("no-epoch", '{"val_top1": 50.0}\n', "line 1 is not a metrics record"),
    ("binary", b"\xff\xfe\x00garbage", "metrics.jsonl cannot be read (not UTF-8 text)"),
]


@pytest.mark.parametrize("metrics, error", [c[1:] for c in _DAMAGED_METRICS], ids=[c[0] for c in _DAMAGED_METRICS])
def test_runs_lists_a_run_with_damaged_metrics_as_damaged(cli, tmp_path, teacher_ckpt, metrics, error):
    root = tmp_path / "runs"
    _folder_of({"bad/metrics.jsonl": metrics}, root)
    good = root / "good" / "checkpoints"
    good.mkdir(parents=True)
    good.joinpath("latest.pt").write_bytes(Path(teacher_ckpt).read_bytes())
    code, out, err = cli("runs", str(root), "--json")
    assert code == 0 and "Traceback" not in err, err
    rows = {Path(r["run"]).name: r for r in json.loads(out)}
    assert error in rows["bad"]["error"]
    assert "error" not in rows["good"] and rows["good"]["model"] == "resnet20"
    code, out, err = cli("runs", str(root))
    assert code == 0 and err == "" and "damaged:" in out


def test_runs_skips_wrongly_typed_checkpoint_fields(cli, tmp_path, teacher_ckpt):
    ckpt = torch.load(teacher_ckpt, weights_only=True)
    ckpt.update(config=["not", "a", "dict"], teacher="resnet20", epoch="three", best_top1=None,
                last_val={"top1": "high"}, data=7)
    run = tmp_path / "runs" / "odd" / "checkpoints"
    run.mkdir(parents=True)
    torch.save(ckpt, run / "latest.pt")
    _folder_of({"metrics.jsonl": '{"epoch": 1, "val_top1": 42.0}\n{"epoch": 2, "val_top1": 4'}, run.parent)
    code, out, err = cli("runs", str(tmp_path / "runs"), "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert (row["model"], row["teacher"], row["method"], row["data"]) == ("resnet20", None, None, None)
    assert (row["epoch"], row["best_top1"], row["last_top1"]) == (1, 42.0, 42.0)  # a torn last line is skipped
    code, out, err = cli("runs", str(tmp_path / "runs"))
    assert code == 0 and err == "" and "42.00" in out


def _image_folder(root: Path, per_class: int = 6) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for c, cls in enumerate(("a", "b")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (20, 20), (40 * i, 200 * c, 30)).save(folder / f"{i}.png")
    return root


def test_a_run_trained_with_skip_bad_images_evaluates_and_exports_without_them(cli, tmp_path):
    images = _image_folder(tmp_path / "imgs")
    (images / "train" / "a" / "bad.png").write_bytes(b"not a png")
    (images / "val" / "b" / "bad.png").write_bytes(b"not a png")
    run = tmp_path / "run"
    base = ["--data", f"imagefolder:{images}", "--input-size", "16", "--batch-size", "4", "--cpu"]
    code, _, err = cli("train", "--model", "resnet20", "--epochs", "1", "--skip-bad-images", "--out", str(run), *base)
    assert code == 0, err
    code, out, err = cli("eval", "--ckpt", str(run / "checkpoints" / "best.pt"))
    assert code == 0, err
    assert "(12 images)" in out
    code, out, err = cli("export", "--ckpt", str(run / "checkpoints" / "best.pt"), "--out", str(tmp_path / "x"))
    assert code == 0, err
    assert "skipped 2 unreadable images, as the run did" in out
    report = json.loads((tmp_path / "x" / "export_report.json").read_text())
    assert report["status"] == "ok" and report["tensor_file"]["val_images"] == 12


def _trained_on_image_folder(cli, tmp_path: Path) -> tuple[Path, str]:
    """The image folder of two classes and the checkpoint of a resnet20 trained on it for one epoch."""
    images = _image_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    code, _, err = cli("train", "--model", "resnet20", "--epochs", "1", "--data", f"imagefolder:{images}",
                       "--input-size", "16", "--batch-size", "4", "--cpu", "--out", str(run))
    assert code == 0, err
    return images, str(run / "checkpoints" / "best.pt")


def test_export_scores_every_class_of_a_folder_sorted_by_class(cli, tmp_path):
    """--val-size below the folder's size: a class-stratified sample, not the first images (all of class a)."""
    from sddcompress_export.tensor_file import load_tensor_file

    _, checkpoint = _trained_on_image_folder(cli, tmp_path)
    code, _, err = cli("export", "--ckpt", checkpoint, "--out", str(tmp_path / "x"), "--val-size", "4")
    assert code == 0, err
    labels = load_tensor_file(tmp_path / "x" / "data.npz").val_labels
    assert sorted(labels.tolist()) == [0, 0, 1, 1]


def test_an_image_that_breaks_after_training_names_a_fix_export_has(cli, tmp_path):
    images, checkpoint = _trained_on_image_folder(cli, tmp_path)
    (images / "val" / "a" / "0.png").write_bytes(b"not a png any more")
    code, _, err = cli("export", "--ckpt", checkpoint, "--out", str(tmp_path / "x"))
    assert code == 2
    line = _one_error_line(err)
    assert "cannot read image" in line and "0.png" in line and "remove or replace it" in line


def _with_stdout_closed(args: list[str]) -> subprocess.CompletedProcess:
    """Run `sddcompress ARGS` whose reader closes stdout before the first line (`... | head -0`)."""
    proc = subprocess.Popen(_cli_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    return subprocess.CompletedProcess(args, proc.wait(timeout=600), "", err)


def test_a_closed_stdout_ends_the_printing_not_the_run(tmp_path):
    out = tmp_path / "run"
    done = _with_stdout_closed([*TRAIN, "--epochs", "2", "--log-every", "1", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert _epochs(out) == ([1, 2], [1, 2])  # every epoch trained, logged and checkpointed
    assert torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["epoch"] == 2


def test_a_closed_stdout_ends_the_printing_not_the_export(teacher_ckpt, tmp_path):
    out = tmp_path / "export"
    done = _with_stdout_closed(["export", "--ckpt", teacher_ckpt, "--out", str(out), "--ort-int8", "--calib-size", "32",
                                "--val-size", "64", "--int8-keep-float", "none", "--int8-calibration", "minmax"])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads((out / "export_report.json").read_text())
    assert report["status"] == "ok"
    assert report["artifacts"]["onnx"]["parity"]["count"] == 64  # the parity check ran
    assert Path(report["artifacts"]["ort_int8"]["path"]).is_file()
