"""Every bad input: one line on stderr naming the fix, a non-zero exit, no traceback."""

from __future__ import annotations

import pytest

from conftest import tiny_args
from helpers import assert_one_line_error
from sddcompress.engine.checkpoint import atomic_save, base_record, model_record
from sddcompress.models import build_model


def distill(cli, tmp_path, teacher_ckpt=None, **over):
    args = ["distill", "--teacher", "resnet20", "--student", "resnet20", "--out", str(tmp_path / "run")]
    if teacher_ckpt:
        args += ["--teacher-ckpt", teacher_ckpt]
    return cli(*args, *tiny_args(**over))


def test_unknown_model(cli, tmp_path, teacher_ckpt):
    assert_one_line_error(cli("train", "--model", "resnet8x5", *tiny_args(), "--out", str(tmp_path)),
                          "unknown model 'resnet8x5'", "resnet8x4")


def test_unknown_method(cli, tmp_path, teacher_ckpt):
    assert_one_line_error(distill(cli, tmp_path, teacher_ckpt, method="fitnet"), "unknown method 'fitnet'", "sdd-dkd")


@pytest.mark.parametrize("scales", ["0,2", "1,x", "1.5", "-1"])
def test_bad_scales(cli, tmp_path, teacher_ckpt, scales):
    assert_one_line_error(distill(cli, tmp_path, teacher_ckpt, scales=scales), "--scales must be positive integers")


def test_feature_map_too_small(cli, tmp_path, teacher_ckpt):
    args = ["distill", "--teacher", "resnet20", "--teacher-ckpt", teacher_ckpt, "--student", "mobilenet_v3_small",
            "--out", str(tmp_path), *tiny_args()]
    assert_one_line_error(cli(*args), "1x1 at 16 px", "--input-size")


def test_teacher_checkpoint_missing(cli, tmp_path):
    assert_one_line_error(distill(cli, tmp_path, str(tmp_path / "nope.pt")), "nope.pt' not found")


def test_teacher_without_weights_says_how_to_get_them(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(distill(cli, tmp_path), "sddcompress train --model resnet20 --data digits")


def test_teacher_checkpoint_corrupt(cli, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    assert_one_line_error(distill(cli, tmp_path, str(bad)), "corrupt")


def test_teacher_checkpoint_wrong_architecture(cli, tmp_path, teacher_ckpt):
    args = ["distill", "--teacher", "resnet32", "--teacher-ckpt", teacher_ckpt, "--student", "resnet20",
            "--out", str(tmp_path), *tiny_args()]
    assert_one_line_error(cli(*args), "holds a 'resnet20', not a 'resnet32'")


def test_teacher_checkpoint_wrong_class_count(cli, tmp_path):
    path = tmp_path / "five.pt"
    atomic_save(base_record(model=model_record("resnet20", build_model("resnet20", 5), 5, 16)), path)
    assert_one_line_error(distill(cli, tmp_path, str(path)), "5 classes but the data has 10")


def test_data_dir_missing(cli, tmp_path):
    args = ["train", "--model", "resnet20", "--data", "cifar100", "--data-dir", str(tmp_path / "none"),
            "--out", str(tmp_path / "o")]
    assert_one_line_error(cli(*args), "cifar100 not found", "--download")


def test_imagefolder_missing_and_without_splits(cli, tmp_path):
    assert_one_line_error(cli("train", "--data", f"imagefolder:{tmp_path / 'x'}", "--out", str(tmp_path / "o")),
                          "does not exist")
    (tmp_path / "folder" / "train").mkdir(parents=True)
    assert_one_line_error(cli("train", "--data", f"imagefolder:{tmp_path / 'folder'}", "--out", str(tmp_path / "o")),
                          "needs train/ and val/", "missing: val")


@pytest.mark.parametrize("flag", ["--batch-size", "--epochs"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_non_positive_sizes(cli, tmp_path, flag, value):
    args = tiny_args()
    args[args.index(flag) + 1] = value
    assert_one_line_error(cli("train", "--model", "resnet20", *args, "--out", str(tmp_path)), f"{flag} must be > 0")


def test_output_dir_not_writable(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(cli("train", "--model", "resnet20", *tiny_args(), "--out", str(blocker / "sub")),
                          "is not writable")


def test_resume_with_nothing_to_resume(cli, tmp_path):
    assert_one_line_error(cli("train", "--model", "resnet20", *tiny_args(), "--out", str(tmp_path), "--resume"),
                          "nothing to resume")


def test_config_with_unknown_key(cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: resnet20\nlearning_rate: 0.1\n")
    assert_one_line_error(cli("train", "--config", str(cfg), "--out", str(tmp_path)), "unknown key(s) learning_rate")


def test_click_usage_error_is_one_line(cli, tmp_path):
    assert_one_line_error(cli("train", "--epochs", "many"), "'many' is not a valid integer")


def test_corrupt_image_is_named_and_can_be_skipped(cli, tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = tmp_path / "imgs" / split / cls
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (20, 20), (60 * i, 100 if cls == "a" else 0, 30)).save(d / f"{i}.png")
    (tmp_path / "imgs" / "train" / "a" / "broken.png").write_bytes(b"not an image")
    base = ["train", "--model", "resnet20", "--data", f"imagefolder:{tmp_path / 'imgs'}", "--input-size", "16",
            "--epochs", "1", "--batch-size", "4", "--cpu", "--out", str(tmp_path / "o")]
    assert_one_line_error(cli(*base), "cannot read image", "broken.png", "--skip-bad-images")
    code, out, err = cli(*base, "--skip-bad-images", "--fresh")
    assert code == 0, err
    assert "skipped 1 unreadable images" in out


@pytest.mark.parametrize("command", [
    ["-c", "from sddcompress.cli.main import main; main()", "runs"],
    ["-m", "sddcompress_export.cli", "check"],
])
def test_reader_closing_the_pipe_is_no_error(tmp_path, command):
    """`sddcompress ... | head` ends quietly, no BrokenPipe traceback: sddcompress-deploy with the shell's
    SIGPIPE status 141, sddcompress through click's own handling (status 1)."""
    import subprocess
    import sys

    args = [sys.executable, *command] + ([str(tmp_path)] if command[-1] == "runs" else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait() == (1 if command[-1] == "runs" else 141), err
    assert err == "", err
