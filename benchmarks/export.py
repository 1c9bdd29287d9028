"""Export cost and what INT8 buys, per calibration method, for one checkpoint, measured in one run:

  export time and ONNX size; then, side by side, PyTorch eager, ONNX Runtime fp32 and one ONNX Runtime INT8
  model per calibration method (minmax, percentile, entropy, auto), each with its top-1 on the same
  validation images, the drop against fp32, the layers it keeps in float, and its latency (p50) at batch 1
  and 32 as a ratio to ORT fp32. The ONNX Runtime models are timed call by call in turn (fp32, each INT8,
  fp32, ...), as the export report times INT8 against fp32, so drift hits every model alike; PyTorch eager,
  whose OpenMP threads keep spinning after each call, is timed in blocks beside blocks of ORT fp32.

Goals on a CPU: ORT fp32 <= 0.5 x eager at batch 1; INT8 <= 0.7 x fp32 at batch 32 with <= 0.5 point drop.

    python benchmarks/export.py                 # the quickstart's SDD student
    python benchmarks/export.py --ckpt runs/quickstart/teacher/checkpoints/best.pt --out /tmp/export-bench

With `--families`, one row per student family instead, each trained briefly on `digits` at 32 px (or on
`--data` at `--input-size`, distilled from `--teacher-ckpt`; or left
untrained with `--epochs 0`: timing-only rows, top-1 meaningless): fp32 and INT8 top-1, the precision plan
chosen for this CPU (its candidate, the layers kept float), what to ship, and the chosen INT8 model's time
as a ratio to fp32 at batch 1 and 32 (interleaved call by call):

    python benchmarks/export.py --families resnet20,mobile_half --epochs 3 --out /tmp/families

`--qat-epochs N` adds, per trained family, the same INT8 model after quantization-aware distillation
(`sddcompress export --qat-epochs`) from one resnet56 teacher trained on digits first: its top-1, drop and
time ratios, timed in the same interleaved rounds as fp32 and the post-training INT8 model, then which of
the two export ships (its rule on the training images the fine-tuning leaves out) and that model's drop.

    python benchmarks/export.py --families all --epochs 3 --qat-epochs 2 --out /tmp/families

Each drop is printed with its standard error over the validation images (in brackets): only images whose
prediction changed move a drop, so the more predictions an INT8 model changes, the less its drop on a given
number of images says. `--rescore DIR` computes the drops of a finished run again from the
models and images it left in DIR, with their standard errors:

    python benchmarks/export.py --rescore /tmp/families

`--distil` distils each family from that teacher (SDD-DKD, the scales its 32-px feature map serves) instead of
training it alone: the flow `sddcompress distill` then `export --qat-epochs` (QAT then starts from local logits
already near the teacher's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sddcompress.benchmarking.backends import ArtifactRunner, TorchRunner
from sddcompress.benchmarking.timer import measure
from sddcompress.engine.checkpoint_eval import model_from_checkpoint
from sddcompress.errors import UserError
from sddcompress.exporting.pipeline import ExportOptions, default_checkpoint, run_export
from sddcompress_export.chain import int8_model
from sddcompress_export.classifier_metrics import logits_metrics, paired_drop, predict_all, score
from sddcompress_export.defaults import DEFAULTS
from sddcompress_export.errors import DeployError
from sddcompress_export.latency_ratio import GOAL_RATIO, batch_of, median_ms_side_by_side
from sddcompress_export.onnxruntime_runner import OrtClassifier
from sddcompress_export.ort_quantization import CALIBRATION_CHOICES
from sddcompress_export.tensor_file import load_tensor_file

BATCHES = (1, 32)
FAMILIES = ("resnet20", "resnet8x4", "wrn_16_2", "vgg8", "mobile_half", "shufflev1_paper", "shufflev2_paper",
            "mobilenetv2", "shufflenetv2", "mobilenet_v3_small")


def train_teacher(out: Path, epochs: int, data: str, input_size: int) -> str:
    """The resnet56 teacher the QAT rows distil from (every label)."""
    from sddcompress.engine.config import TrainConfig
    from sddcompress.engine.trainer import run

    return str(run(TrainConfig(model="resnet56", data=data, input_size=input_size, epochs=epochs, batch_size=64, lr=0.05,
                               schedule="cosine", out=str(out / "teacher-resnet56"), cpu=True, log_every=10**6),
                   echo=lambda s: None).best)


def qat_model(checkpoint: str, onnx_path: str, ptq, folder: Path, epochs: float, teacher: str, dataset: str,
              input_size: int) -> tuple[Path, dict]:
    """The post-training INT8 model `ptq` fine-tuned by quantization-aware distillation, beside it whatever it
    scores, and the summary of `export --qat-epochs` on a copy of `ptq` (`shipped`: which model export keeps,
    by its rule on the training images the fine-tuning leaves out)."""
    import shutil

    from sddcompress.engine.checkpoint import load_checkpoint
    from sddcompress.engine.checkpoint_eval import dataset_for_checkpoint
    from sddcompress.exporting.qat import qat_int8
    from sddcompress.exporting.qat_options import QatOptions

    shipped, fine_tuned = folder / "model.shipped.int8.onnx", folder / "model.qat.int8.onnx"
    shutil.copyfile(ptq.path, shipped)
    ckpt = load_checkpoint(checkpoint)
    bundle = dataset_for_checkpoint(ckpt, dataset, None, input_size)
    summary = qat_int8(ckpt, bundle, Path(onnx_path), shipped, ptq, QatOptions(epochs, teacher_ckpt=teacher),
                       echo=lambda s: None, fine_tuned_copy=fine_tuned)
    return fine_tuned, summary


def fitting_sdd_scales(name: str, input_size: int = 32) -> str:
    """The SDD scales (of 1,2,4) that `name`'s last feature map can serve at `input_size`, as --scales takes them."""
    from sddcompress.models import LocalLogits
    from sddcompress.models.registry import build_model

    for scales in ((1, 2, 4), (1, 2)):
        try:
            LocalLogits(build_model(name, 10, input_size), input_size, scales)
            return ",".join(map(str, scales))
        except UserError:
            continue
    return "1"


def paired_scores(logits: dict, labels) -> dict:
    """Top-1 of each model's logits on the same images, and for every model after the first (the fp32
    reference) its drop against it with the drop's standard error and how many predictions changed:
    `<name>_top1`, `<name>_drop`, `<name>_drop_se`, `<name>_changed` (for the model named "int8", plain `drop`,
    `drop_se`)."""
    (reference_name, reference), *others = logits.items()
    scores = {f"{name}_top1": logits_metrics(values, labels)["top1"] for name, values in logits.items()}
    for name, values in others:
        change = paired_drop(reference, values, labels)
        key = "drop" if name == "int8" else f"{name}_drop"
        scores.update({key: scores[f"{reference_name}_top1"] - scores[f"{name}_top1"],
                       f"{key}_se": change["standard_error"],
                       f"{name}_changed": change["changed"]})
    return scores


def family_row(name: str, out: Path, epochs: int, calib_size: int, calls: int, qat_epochs: float = 0.0,
               teacher: str | None = None, distil: bool = False, seed: int = 0, dataset: str = "digits",
               input_size: int = 32) -> dict:
    """Train `name` on `dataset` (digits at 32 px by default; alone, or distilled from `teacher` with SDD-DKD when
    `distil`; or not at all), export, quantise with the default chain (accuracy, then the precision plan for this
    CPU) and time the chosen INT8 model against fp32."""
    import numpy as np

    from sddcompress.engine.checkpoint import load_checkpoint
    from sddcompress.engine.config import TrainConfig
    from sddcompress.engine.trainer import run
    from sddcompress.exporting.onnx_writer import write_onnx
    from sddcompress.models.registry import build_model
    from sddcompress_export.metadata import ModelMetadata

    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    checkpoint = None
    if epochs > 0:
        how = (dict(method="sdd-dkd", teacher=load_checkpoint(teacher)["model"]["name"], teacher_ckpt=teacher,
                    scales=fitting_sdd_scales(name, input_size)) if distil else {})
        result = run(TrainConfig(model=name, data=dataset, input_size=input_size, epochs=epochs, batch_size=64, lr=0.05,
                                 schedule="cosine", out=str(folder / "train"), cpu=True, log_every=10**6, seed=seed,
                                 **how),
                     echo=lambda s: None)
        # parity within 1e-2: a briefly trained model's logits are large
        report = run_export(ExportOptions(ckpt=str(result.best), out=str(folder), calib_size=calib_size, atol=1e-2),
                            echo=lambda s: None)
        onnx_path, data = report["artifacts"]["onnx"]["path"], load_tensor_file(report["tensor_file"]["path"])
        checkpoint = str(result.best)
    else:  # untrained weights: the graph and its timing only
        torch.manual_seed(0)
        net = build_model(name, 10, input_size).eval()
        onnx_path = str(folder / "model.onnx")
        write_onnx(net, onnx_path, ModelMetadata([str(k) for k in range(10)], input_size, [0.5] * 3, [0.5] * 3,
                                                 model_name=name))
        rng = np.random.default_rng(0)
        images = rng.standard_normal((calib_size + 256, 3, input_size, input_size)).astype(np.float32)
        data = type("Data", (), {"calib_images": images[:calib_size], "calib_labels": None,
                                 "val_images": images[calib_size:], "val_labels": np.zeros(256, np.int64)})
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = int8_model(onnx_path, folder / "model.int8.onnx", data.calib_images, data.calib_labels, calib_size)
    quantize_seconds = time.perf_counter() - started
    fp32, int8 = OrtClassifier(onnx_path), OrtClassifier(result.path)
    fp32_logits = predict_all(fp32, data.val_images)
    scores = paired_scores({"fp32": fp32_logits, "int8": predict_all(int8, data.val_images)}, data.val_labels)
    fp32_top1, int8_top1 = scores["fp32_top1"], scores["int8_top1"]
    as_written = int8.as_written() or int8
    plan = result.plan or {}
    row = {"family": name, "epochs": epochs, "distilled": distil, **scores,
           "as_written_top1": score(as_written, data.val_images, data.val_labels)["top1"],
           "rewrite": result.rewrite.summary(), "plan": plan.get("chosen"), "float_nodes": result.float_nodes,
           "why": plan.get("why", {}), "ship": plan.get("ship"), "plan_ratio": plan.get("ratio"), "plan_fastest_ratio": plan.get("fastest_ratio"),
           "plan_retimed": plan.get("retimed", False),
           "layers": len(plan.get("layer_costs_us", {})),
           # weighted layers among the float nodes (a float region also holds activations, sums, concatenations)
           "float_layers": len(set(result.float_nodes) & set(plan.get("layer_costs_us", {}))),
           "train_export_seconds": train_seconds,
           "quantize_seconds": quantize_seconds,
           "candidates": {c["name"]: c["ratio"] for c in plan.get("candidates", [])}}
    models = {"fp32": fp32, "int8": int8}
    if qat_epochs and checkpoint:
        qat_path, summary = qat_model(checkpoint, onnx_path, result, folder, qat_epochs, teacher, dataset,
                                      input_size)
        models["qat"] = OrtClassifier(qat_path)
        row.update(paired_scores({"fp32": fp32_logits, "qat": predict_all(models["qat"], data.val_images)},
                                 data.val_labels))
        shipped_top1 = row["qat_top1"] if summary["shipped"] == "quantization-aware" else int8_top1
        row.update(qat_steps=summary["steps"], qat_seconds=summary["seconds"],
                   qat_shipped=summary["shipped"], shipped_drop=fp32_top1 - shipped_top1,
                   qat_rule={k: summary.get(k) for k in ("rule_images", "rule_fp32_top1", "rule_post_training_top1",
                                                          "rule_quantization_aware_top1")})
    for batch, rounds in zip(BATCHES, (calls * 4, calls)):
        ms = median_ms_side_by_side(models, batch_of(data.val_images, batch), rounds=rounds)
        row[f"x_fp32_b{batch}"] = ms["int8"] / ms["fp32"]
        row[f"fp32_ms_b{batch}"] = ms["fp32"]
        if "qat" in ms:
            row[f"qat_x_fp32_b{batch}"] = ms["qat"] / ms["fp32"]
    return row


def _with_se(row: dict, key: str) -> str:
    return f"{row[key]:+.2f} ({row[key + '_se']:.2f})"


def rescore_main(folder: Path) -> None:
    """The drops of a finished `--families` run again, from the models and images it left in `folder`, with their
    standard errors: whether a drop above a goal is more than the validation images can resolve."""
    listed = json.loads((folder / "families.json").read_text())
    rows = []
    print(f"{'family':<20}{'fp32':>7}{'int8 drop (se)':>16}{'changed':>8}{'qat drop (se)':>16}{'changed':>8}"
          f"{'shipped drop (se)':>19}")
    for listed_row in listed:
        if "failed" in listed_row:
            continue
        name = listed_row["family"]
        if not (folder / name / "data.npz").is_file():  # an untrained (--epochs 0) row: timing only
            continue
        data = load_tensor_file(folder / name / "data.npz")
        models = {"fp32": OrtClassifier(str(folder / name / "model.onnx")),
                  "int8": OrtClassifier(str(folder / name / "model.int8.onnx"))}
        if (folder / name / "model.qat.int8.onnx").is_file():
            models["qat"] = OrtClassifier(str(folder / name / "model.qat.int8.onnx"))
        logits = {role: predict_all(model, data.val_images) for role, model in models.items()}
        row = {"family": name, **paired_scores(logits, data.val_labels)}
        qat = ""
        if "qat" in models:
            shipped = "qat" if listed_row.get("qat_shipped") == "quantization-aware" else "int8"
            row.update(shipped=shipped, shipped_drop=row["qat_drop" if shipped == "qat" else "drop"],
                       shipped_drop_se=row["qat_drop_se" if shipped == "qat" else "drop_se"])
            qat = f"{_with_se(row, 'qat_drop'):>16}{row['qat_changed']:>8}{_with_se(row, 'shipped_drop'):>19}"
        rows.append(row)
        print(f"{name:<20}{row['fp32_top1']:>7.2f}{_with_se(row, 'drop'):>16}{row['int8_changed']:>8}{qat}",
              flush=True)
    (folder / "families-paired.json").write_text(json.dumps(rows, indent=2))
    print(f"rows: {folder / 'families-paired.json'}")


def families_main(args) -> None:
    out = Path(args.out or tempfile.mkdtemp(prefix="sddcompress-families-"))
    rows = []
    names = FAMILIES if args.families == "all" else args.families.split(",")
    needs_teacher = (args.qat_epochs or args.distil) and args.epochs > 0
    dataset, input_size = args.data or "digits", args.input_size or 32
    teacher = (args.teacher_ckpt or train_teacher(out, max(2 * args.epochs, 4), dataset, input_size)) \
        if needs_teacher else None
    qat_head = f"{'qat':>7}{'drop (se)':>14}{'b=1 x':>7}{'b=32 x':>8}  {'export ships':<19}{'drop':>6}" \
        if teacher else ""
    print(f"{'family':<20}{'fp32':>7}{'int8':>7}{'drop (se)':>14}  {'plan':<20}{'float':>8}{'ship':>6}"
          f"{'b=1 x':>7}{'b=32 x':>8}{qat_head}", flush=True)
    for name in names:
        try:
            row = family_row(name, out, args.epochs, args.calib_size, args.calls, args.qat_epochs, teacher,
                             args.distil, args.seed, dataset, input_size)
        except (UserError, DeployError) as exc:  # one family's failure is a row, not the end of the table
            rows.append({"family": name, "failed": str(exc)})
            print(f"{name:<20}failed: {exc}", flush=True)
            continue
        rows.append(row)
        qat = (f"{row['qat_top1']:>7.2f}{_with_se(row, 'qat_drop'):>14}{row['qat_x_fp32_b1']:>7.2f}"
               f"{row['qat_x_fp32_b32']:>8.2f}  {row['qat_shipped']:<19}{row['shipped_drop']:>+6.2f}") \
            if "qat_top1" in row else ""
        print(f"{name:<20}{row['fp32_top1']:>7.2f}{row['int8_top1']:>7.2f}{_with_se(row, 'drop'):>14}  {row['plan']:<20}"
              f"{row['float_layers']:>4}/{row['layers']:<3}{row['ship']:>6}{row['x_fp32_b1']:>7.2f}"
              f"{row['x_fp32_b32']:>8.2f}{qat}", flush=True)
        (out / "families.json").write_text(json.dumps(rows, indent=2))
    print(f"rows: {out / 'families.json'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--data", default=None, help="dataset, if the checkpoint's is not the one to score on; with "
                    "--families: the one the students train on [default: digits]")
    ap.add_argument("--input-size", type=int, default=None, help="with --families: image size [default: 32]")
    ap.add_argument("--teacher-ckpt", default=None,
                    help="with --families: the teacher to distil from, instead of a resnet56 trained here")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--calib-size", type=int, default=DEFAULTS.calib_size)
    ap.add_argument("--val-size", type=int, default=None)
    ap.add_argument("--methods", default=",".join(("minmax", "percentile", "entropy", "auto")))
    ap.add_argument("--calls", type=int, default=100, help="interleaved calls per ONNX Runtime model and batch")
    ap.add_argument("--rounds", type=int, default=5, help="eager vs ORT fp32: blocks per backend and batch")
    ap.add_argument("--iters", type=int, default=30, help="eager vs ORT fp32: calls per block")
    ap.add_argument("--families", default=None,
                    help=f"comma-separated student families, or all ({', '.join(FAMILIES)}): one row each")
    ap.add_argument("--epochs", type=int, default=3, help="with --families: training epochs (0: untrained)")
    ap.add_argument("--distil", action="store_true",
                    help="with --families: distil each family from the resnet56 teacher (SDD-DKD) instead of training it "
                         "alone, as `sddcompress distill` would")
    ap.add_argument("--seed", type=int, default=0,
                    help="with --families: the students' training seed (the teacher is trained with seed 0)")
    ap.add_argument("--qat-epochs", type=float, default=0.0,
                    help="with --families: also quantization-aware distillation, this many epochs, per trained family")
    ap.add_argument("--rescore", default=None, metavar="DIR",
                    help="the drops of a finished --families run in DIR again, with their standard errors")
    args = ap.parse_args()
    if args.rescore:
        return rescore_main(Path(args.rescore))
    if args.families:
        return families_main(args)
    ckpt = args.ckpt or default_checkpoint()
    out = Path(args.out or tempfile.mkdtemp(prefix="sddcompress-export-bench-"))
    started = time.perf_counter()
    report = run_export(ExportOptions(ckpt=ckpt, out=str(out), data=args.data, data_dir=args.data_dir,
                                      calib_size=args.calib_size, val_size=args.val_size), echo=lambda s: None)
    export_seconds = time.perf_counter() - started
    onnx_info = report["artifacts"]["onnx"]
    data = load_tensor_file(report["tensor_file"]["path"])
    fp32_top1 = onnx_info["metrics"]["top1"]

    rows: dict[str, dict] = {"torch eager": {"top1": report["torch_metrics"]["top1"]},
                             "ORT fp32": {"top1": fp32_top1}}
    runners = {"torch eager": TorchRunner(model_from_checkpoint(ckpt)[0]),
               "ORT fp32": ArtifactRunner(OrtClassifier(onnx_info["path"]))}
    for method in args.methods.split(","):
        if method not in CALIBRATION_CHOICES:
            raise SystemExit(f"--methods: unknown '{method}'; use {', '.join(CALIBRATION_CHOICES)}")
        t0 = time.perf_counter()
        result = int8_model(onnx_info["path"], out / f"model.int8.{method}.onnx", data.calib_images,
                            data.calib_labels, args.calib_size, method=method)
        metrics = score(OrtClassifier(result.path), data.val_images, data.val_labels)
        name = f"INT8 {method}" + (f"->{result.method}" if method == "auto" else "")
        rows[name] = {"top1": metrics["top1"], "drop": fp32_top1 - metrics["top1"], "float": result.float_nodes,
                      "quantize_seconds": time.perf_counter() - t0, "bytes": result.path.stat().st_size,
                      "held_out_drop": result.held_out_drop()}
        runners[name] = ArtifactRunner(OrtClassifier(result.path))

    p50: dict[tuple[str, int], float] = {}
    x_fp32: dict[tuple[str, int], float] = {}
    ort_runners = {name: r for name, r in runners.items() if name != "torch eager"}
    for batch in BATCHES:
        x = batch_of(data.val_images, batch)
        handles = {name: r.prepare(x) for name, r in runners.items()}
        calls = {name: (lambda _, r=r, h=handles[name]: r.run(h)) for name, r in ort_runners.items()}
        p50.update({(name, batch): ms for name, ms in median_ms_side_by_side(calls, x, rounds=args.calls).items()})
        blocks: dict[str, list[float]] = {"torch eager": [], "ORT fp32": []}
        for _ in range(args.rounds):
            for name in blocks:
                time.sleep(0.2)  # let the previous runtime's spinning worker threads go idle first
                blocks[name].append(measure(lambda: runners[name].run(handles[name]), warmup=3,
                                            min_iters=args.iters).p50)
        p50[("torch eager", batch)] = statistics.median(blocks["torch eager"])
        x_fp32[("torch eager", batch)] = p50[("torch eager", batch)] / statistics.median(blocks["ORT fp32"])
        for name in ort_runners:
            x_fp32[(name, batch)] = p50[(name, batch)] / p50[("ORT fp32", batch)]

    print(f"{report['model']} from {ckpt}; {torch.get_num_threads()} threads; {len(data.val_images)} validation, "
          f"{len(data.calib_images)} calibration (training) images")
    print(f"export (tensor file + ONNX + parity): {export_seconds:.1f}s; ONNX {onnx_info['bytes'] / 1e6:.2f} MB "
          f"(opset {onnx_info['opset']})")
    print(f"{'model':<22}{'top-1':>7}{'drop':>7}{'float':>6}{'quant s':>8}{'b=1 ms':>9}{'x fp32':>7}"
          f"{'b=32 ms':>9}{'x fp32':>7}")
    for name, row in rows.items():
        drop = f"{row['drop']:+.2f}" if "drop" in row else ""
        floats = str(len(row["float"])) if "float" in row else ""
        quant = f"{row['quantize_seconds']:.1f}" if "quantize_seconds" in row else ""
        print(f"{name:<22}{row['top1']:>7.2f}{drop:>7}{floats:>6}{quant:>8}{p50[(name, 1)]:>9.3f}"
              f"{x_fp32[(name, 1)]:>7.2f}{p50[(name, 32)]:>9.3f}{x_fp32[(name, 32)]:>7.2f}")
        row.update({f"p50_ms_b{b}": p50[(name, b)] for b in BATCHES})
        row.update({f"x_fp32_b{b}": x_fp32[(name, b)] for b in BATCHES})
    fp32_vs_eager = 1 / x_fp32[("torch eager", 1)]
    print(f"goal ORT fp32 <= 0.5 x eager at b=1: {fp32_vs_eager:.2f} -> {'met' if fp32_vs_eager <= 0.5 else 'NOT met'}")
    for name, row in rows.items():
        if name.startswith("INT8"):
            ok = row["drop"] <= DEFAULTS.max_drop and row["x_fp32_b32"] <= GOAL_RATIO
            print(f"goal {name}: drop {row['drop']:+.2f} <= {DEFAULTS.max_drop}, b=32 {row['x_fp32_b32']:.2f} <= "
                  f"{GOAL_RATIO} x fp32 "
                  f"-> {'met' if ok else 'NOT met'}; float layers: {', '.join(row['float']) or 'none'}")
    (out / "export_bench.json").write_text(json.dumps({"checkpoint": ckpt, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
