"""The methods sweep (resumable, paired gains), the quickstart's seeded comparison, `sddcompress runs`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from helpers import load_benchmark

methods_benchmark = load_benchmark("methods")


def test_summary_pairs_gains_by_seed():
    runs = {"ce": [{"seed": 0, "best": 50.0, "last": 48.0}, {"seed": 1, "best": 52.0, "last": 50.0}],
            "kd": [{"seed": 0, "best": 53.0, "last": 52.0}, {"seed": 1, "best": 53.0, "last": 51.0}]}
    table = methods_benchmark.summarise(runs)
    assert table["ce"]["best_mean"] == 51.0 and "gain_best_mean" not in table["ce"]
    assert table["kd"]["gain_best_mean"] == 2.0  # (+3, +1) paired by seed
    assert table["kd"]["gain_best_std"] == pytest.approx(2 ** 0.5)
    assert table["kd"]["gain_last_mean"] == 2.5 and table["kd"]["n"] == 2


def test_warmups_scale_with_the_budget():
    assert methods_benchmark.method_overrides("sdd-dkd", 24) == {"warmup_epochs": 2.0}
    assert methods_benchmark.method_overrides("kd", 24) == {}
    assert methods_benchmark.method_overrides("sdd-dkd+msdcrd", 24) == {"warmup_epochs": 2.0, "msd_ramp_epochs": 2.0}


def test_beta_goes_only_to_the_dkd_methods():
    assert methods_benchmark.method_overrides("sdd-dkd", 24, beta=2.0) == {"warmup_epochs": 2.0, "beta": 2.0}
    assert methods_benchmark.method_overrides("dkd", 24, beta=2.0)["beta"] == 2.0
    assert "beta" not in methods_benchmark.method_overrides("sdd-kd", 24, beta=2.0)
    assert "beta" not in methods_benchmark.method_overrides("msdcrd", 24, beta=2.0)


def _image_folder(root: Path, per_class: int = 12) -> Path:
    for split in ("train", "val"):
        for c, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (20, 20), tuple(max(0, v - 9 * i) for v in colour)).save(folder / f"{i}.png")
    return root


def test_image_folder_copy_is_resized_once(tmp_path):
    source = _image_folder(tmp_path / "src", per_class=2)
    data = methods_benchmark.resized_image_folder(f"imagefolder:{source}", 8, tmp_path / "out")
    copy = Path(data.split(":", 1)[1])
    files = sorted(copy.glob("*/*/*.png"))
    assert len(files) == 12 and all(Image.open(f).size == (8, 8) for f in files)
    stamp = files[0].stat().st_mtime_ns
    methods_benchmark.resized_image_folder(f"imagefolder:{source}", 8, tmp_path / "out")
    assert files[0].stat().st_mtime_ns == stamp


def test_sweep_writes_reports_and_resumes_without_retraining(tmp_path, monkeypatch):
    data = _image_folder(tmp_path / "data")
    args = ["--data", f"imagefolder:{data}", "--input-size", "16", "--teacher", "resnet20", "--methods", "ce,kd",
            "--seeds", "2", "--epochs", "1", "--teacher-epochs", "1", "--subset", "0.5", "--batch-size", "4",
            "--teacher-batch-size", "4", "--out", str(tmp_path / "sweep")]
    first = methods_benchmark.main(args)
    assert list(first["scenarios"]) == ["full-label", "label-scarce"]
    for scenario in first["scenarios"].values():
        assert set(scenario["summary"]) == {"ce", "kd"} and scenario["summary"]["kd"]["gain_best_n"] == 2
    out = tmp_path / "sweep"
    report = (out / "methods.md").read_text()
    assert report.count("| kd | 2 |") == 2 and "## full-label" in report and "## label-scarce" in report
    assert (out / "methods.png").stat().st_size > 5000
    ckpt = json.loads((out / "methods.json").read_text())["scenarios"]["label-scarce"]["runs"]["kd"][0]["checkpoint"]
    assert Path(ckpt).is_file()

    # 36 training images, 18 labelled: full-label students see 18 (4 batches of 4), label-scarce ones all 36
    # (9 batches) with CE on the 18 labelled only, for ceil(9 / 4) = 3 epochs so it takes as many steps
    def config(folder: str) -> dict:
        from sddcompress.engine.checkpoint import load_checkpoint

        return load_checkpoint(out / folder / "checkpoints" / "latest.pt")["config"]

    assert first["scenarios"]["label-scarce"]["ce_epochs"] == 3
    scarce_kd, scarce_ce, full_kd = (config("resnet20-kd-label-scarce-seed1"), config("resnet20-ce-label-scarce-seed1"),
                                     config("resnet20-kd-seed1"))
    assert (scarce_kd["train_fraction"], scarce_kd["labelled_fraction"], scarce_kd["epochs"]) == (1.0, 0.5, 1)
    assert (scarce_ce["labelled_fraction"], scarce_ce["epochs"], scarce_ce["method"]) == (0.5, 3, "ce")
    assert (full_kd["train_fraction"], full_kd["labelled_fraction"]) == (0.5, 1.0)

    import sddcompress.engine.trainer as trainer

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(trainer, "run", no_training)
    again = methods_benchmark.main(args)
    assert again["scenarios"] == first["scenarios"]


def test_sweep_refuses_an_unknown_scenario(tmp_path):
    with pytest.raises(SystemExit, match="unknown scenario.*full-label and/or label-scarce"):
        methods_benchmark.main(["--data", "digits", "--scenarios", "few-labels", "--out", str(tmp_path)])


def test_quickstart_verdict_follows_the_seeds():
    from sddcompress.quickstart import verdict

    assert "better" in verdict([2.0, 3.0, 2.5])
    assert "no clear difference" in verdict([2.0, -1.0, 0.5])
    assert "no clear difference" in verdict([0.2, 0.1, 3.0])  # mean below the spread
    assert "worse" in verdict([-2.0, -3.0, -2.5])
    assert "one seed" in verdict([4.0])


def test_quickstart_layout_seeds_and_runs_table(tmp_path, monkeypatch, cli):
    import sddcompress.quickstart as qs

    original = qs._config
    monkeypatch.setattr(qs, "TEACHER", "resnet20")
    monkeypatch.setattr(qs, "_config", lambda *a, **k: original(*a, **{**k, "max_train_batches": 1}))
    said: list[str] = []
    summary = qs.run_quickstart(tmp_path / "qs", epochs=1, fresh=False, echo=said.append, seeds=2)
    assert [r["role"] for r in summary["rows"]] == ["teacher", "student (CE)", "student (SDD-DKD)"]
    assert len(summary["rows"][2]["top1_seeds"]) == 2 and summary["epochs"] == 1 and summary["teacher_epochs"] == 2
    # the CE students take as many steps over the 70 labelled digits (1 batch) as SDD-DKD over all 1437 (22)
    assert (summary["steps"], summary["ce_epochs"], summary["labelled_fraction"]) == (22, 22, 0.05)
    deploy = summary["deploy"]
    assert Path(deploy["int8_path"]).is_file() and deploy["int8_path"].endswith("student-sdd-dkd/export/model.int8.onnx")
    assert deploy["teacher_ms"] > 0 and deploy["student_int8_ms"] > 0 and deploy["val_images"] == 360
    assert said[-2] == qs.deploy_line(summary) and "(ONNX Runtime INT8)" in said[-2]
    assert summary["student_checkpoint"].endswith("student-sdd-dkd/checkpoints/best.pt")
    assert Path(summary["teacher_checkpoint"]).is_file()
    saved = json.loads((tmp_path / "qs" / "summary.json").read_text())
    assert saved["verdict"] == qs.verdict(saved["gain_sdd_dkd_over_ce"]["per_seed"])

    code, out, _ = cli("runs", str(tmp_path / "qs"), "--json")
    assert code == 0
    rows = {Path(r["run"]).name: r for r in json.loads(out)}
    assert set(rows) == {"teacher", "student-ce", "student-sdd-dkd", "student-ce-seed1", "student-sdd-dkd-seed1"}
    sdd = rows["student-sdd-dkd-seed1"]
    assert (sdd["model"], sdd["teacher"], sdd["method"], sdd["seed"], sdd["train_fraction"]) == \
        ("resnet20", "resnet20", "sdd-dkd", 1, 1.0)
    assert (sdd["labelled_fraction"], sdd["labelled"], sdd["unlabelled"]) == (0.05, 70, 1437 - 70)
    assert (rows["student-ce-seed1"]["labelled"], rows["student-ce-seed1"]["unlabelled"]) == (70, 0)
    assert sdd["epoch"] == 1 and sdd["best_top1"] == summary["rows"][2]["top1_seeds"][1]
    code, out, _ = cli("runs", str(tmp_path / "qs"))
    assert code == 0 and "student-sdd-dkd-seed1" in out and "sdd-dkd" in out


def test_runs_command_errors_and_empty_folder(cli, tmp_path):
    code, _, err = cli("runs", str(tmp_path / "missing"))
    assert code == 2 and err.count("\n") == 1 and "is not a folder" in err
    code, out, _ = cli("runs", str(tmp_path))
    assert code == 0 and "no runs under" in out
