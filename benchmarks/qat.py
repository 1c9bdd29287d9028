"""Quantization-aware distillation against post-training INT8, on real images, over seeds.

For every student of a `benchmarks/methods.py` sweep whose method is in --methods (both scenarios, every seed),
on the validation images of --data (default: the dataset the student trained on):

  fp32 top-1; the post-training INT8 model's (the default chain: calibration, float regions, precision plan);
  the model after --epochs of quantization-aware distillation against the student's teacher, whatever it
  scores; and the model `sddcompress export --qat-epochs` ships by its rule, with the rule's own figures
  (top-1 of fp32, post-training and fine-tuned on the training images the fine-tuning left out).

Then, per method and scenario, the mean and spread over seeds of each model's drop against fp32.

    python benchmarks/qat.py --data imagefolder:runs/methods/data-cifar10-subset-16px   # the 2000 val images
    python benchmarks/qat.py --runs runs/methods --methods sdd-dkd --epochs 3 --out runs/qat-3
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

from sddcompress.engine.checkpoint import load_checkpoint
from sddcompress.engine.checkpoint_eval import dataset_for_checkpoint
from sddcompress.exporting.pipeline import ExportOptions, run_export
from sddcompress.exporting.qat import qat_int8
from sddcompress.exporting.qat_options import QatOptions
from sddcompress.stats import mean_std
from sddcompress_export.atomic import atomic_write_text
from sddcompress_export.chain import int8_model
from sddcompress_export.classifier_metrics import score
from sddcompress_export.defaults import DEFAULTS
from sddcompress_export.onnxruntime_runner import OrtClassifier
from sddcompress_export.tensor_file import load_tensor_file

REPO = Path(__file__).resolve().parent.parent
RUN_NAME = re.compile(r"^(?P<student>[^-]+)-(?P<method>.+?)(?P<scarce>-label-scarce)?-seed(?P<seed>\d+)$")
MODELS = ("post_training", "fine_tuned", "shipped")


def students(runs: Path, methods: list[str]) -> list[tuple[Path, dict]]:
    """(best checkpoint, name parts) of every finished student run of `methods` in a methods sweep."""
    found = []
    for folder in sorted(runs.iterdir()):
        match = RUN_NAME.match(folder.name)
        best = folder / "checkpoints" / "best.pt"
        if match and match["method"] in methods and best.is_file():
            found.append((best, {"run": folder.name, "method": match["method"], "seed": int(match["seed"]),
                                 "scenario": "label-scarce" if match["scarce"] else "full-label"}))
    return found


def student_row(checkpoint: Path, folder: Path, data: str | None, options: QatOptions, max_drop: float) -> dict:
    """Export `checkpoint`, quantise it, fine-tune it as quantised, and score every model on the validation images."""
    folder.mkdir(parents=True, exist_ok=True)
    report = run_export(ExportOptions(ckpt=str(checkpoint), out=str(folder), data=data), echo=lambda s: None)
    onnx_path = Path(report["artifacts"]["onnx"]["path"])
    tensors = load_tensor_file(report["tensor_file"]["path"])
    started = time.perf_counter()
    ptq = int8_model(onnx_path, folder / "model.int8.onnx", tensors.calib_images, tensors.calib_labels)
    ptq_seconds = time.perf_counter() - started
    shipped, fine_tuned = folder / "model.shipped.int8.onnx", folder / "model.qat.int8.onnx"
    shutil.copyfile(ptq.path, shipped)
    ckpt = load_checkpoint(str(checkpoint))
    bundle = dataset_for_checkpoint(ckpt, data or ckpt["data"], None, ckpt["model"].get("input_size"))
    summary = qat_int8(ckpt, bundle, onnx_path, shipped, ptq, options, lambda s: None, max_drop,
                       fine_tuned_copy=fine_tuned)
    top1 = {name: score(OrtClassifier(str(path)), tensors.val_images, tensors.val_labels)["top1"]
            for name, path in (("fp32", onnx_path), ("post_training", ptq.path), ("fine_tuned", fine_tuned),
                               ("shipped", shipped))}
    return {"val_images": len(tensors.val_labels), **{f"{k}_top1": v for k, v in top1.items()},
            **{f"{k}_drop": top1["fp32"] - top1[k] for k in MODELS}, "ptq_float_nodes": len(ptq.float_nodes),
            "ptq_seconds": ptq_seconds, "shipped_model": summary["shipped"], "qat_steps": summary["steps"],
            "qat_seconds": summary["seconds"], "rule_images": summary["rule_images"],
            **{f"rule_{k}": summary.get(f"rule_{k}_top1") for k in ("fp32", "post_training", "quantization_aware")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=str(REPO / "runs" / "methods"), help="a benchmarks/methods.py output folder")
    ap.add_argument("--methods", default="sdd-dkd,kd", help="comma separated")
    ap.add_argument("--data", default=None, help="dataset to calibrate, fine-tune and score on [default: the student's]")
    ap.add_argument("--epochs", type=float, default=1.0, help="--qat-epochs")
    ap.add_argument("--lr", type=float, default=QatOptions.lr, help="--qat-lr")
    ap.add_argument("--max-drop", type=float, default=DEFAULTS.max_drop, help="--int8-max-drop")
    ap.add_argument("--out", default=None, help="[default: RUNS/qat]")
    args = ap.parse_args()
    runs = Path(args.runs)
    out = Path(args.out) if args.out else runs / "qat"
    found = students(runs, args.methods.split(","))
    if not found:
        raise SystemExit(f"no finished student of {args.methods} in {runs}; run benchmarks/methods.py first")
    options = QatOptions(args.epochs, args.lr)
    rows = []
    print(f"{'run':<40}{'fp32':>7}{'PTQ':>7}{'QAT':>7}{'ships':>7}  {'rule: fp32 / PTQ / QAT (images)':<34}", flush=True)
    for checkpoint, names in found:
        row = {**names, **student_row(checkpoint, out / names["run"], args.data, options, args.max_drop)}
        rows.append(row)
        rule = (f"{row['rule_fp32']:.2f} / {row['rule_post_training']:.2f} / {row['rule_quantization_aware']:.2f} "
                f"({row['rule_images']})") if row["rule_images"] else "unchecked"
        print(f"{row['run']:<40}{row['fp32_top1']:>7.2f}{row['post_training_top1']:>7.2f}"
              f"{row['fine_tuned_top1']:>7.2f}{'QAT' if row['shipped_model'] == 'quantization-aware' else 'PTQ':>7}  "
              f"{rule}", flush=True)
        atomic_write_text(out / "qat.json", json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"\ndrop against fp32 on {rows[0]['val_images']} val images, mean +- std over seeds "
          f"({args.epochs:g} QAT epochs, lr {args.lr:g}):")
    print(f"{'method':<16}{'scenario':<14}{'seeds':>6}{'PTQ':>15}{'QAT':>15}{'shipped':>15}{'QAT shipped':>13}")
    for key in sorted({(r["method"], r["scenario"]) for r in rows}):
        group = [r for r in rows if (r["method"], r["scenario"]) == key]
        cells = "".join(f"{'%+.2f +- %.2f' % mean_std([r[f'{m}_drop'] for r in group]):>15}" for m in MODELS)
        ships = sum(r["shipped_model"] == "quantization-aware" for r in group)
        print(f"{key[0]:<16}{key[1]:<14}{len(group):>6}{cells}{f'{ships}/{len(group)}':>13}")
    print(f"rows: {out / 'qat.json'}")


if __name__ == "__main__":
    main()
