"""A table of bad inputs: each row is a command, its exit code and a phrase its one-line error must hold.

Rows run in-process (the `cli` fixture for `sddcompress`, `deploy` for the torch-free `sddcompress-deploy`);
every row must end in exactly one stderr line starting with `error: `, and never in a traceback.
Placeholders in the arguments ({ckpt}, {onnx}, {int8}, {npz}, {f[NAME]}) are files built once per module.
"""

from __future__ import annotations

import datetime

import numpy as np
import pytest
import torch

from conftest import tiny_args
from sddcompress_export.errors import MAX_ERROR_CHARS, error_line

TRAIN = ["train", "--model", "resnet20", "--out", "{tmp}/run", *tiny_args()]
DISTILL = ["distill", "--teacher", "resnet20", "--student", "resnet20", "--teacher-ckpt", "{ckpt}",
           "--out", "{tmp}/run", *tiny_args()]

MSD = [*DISTILL, "--method", "msdcrd"]


def _with(base: list[str], *extra: str) -> list[str]:
    """`base` with some options replaced (a flag already in base gets the new value) or added."""
    args = list(base)
    extra_list = list(extra)
    while extra_list:
        flag = extra_list.pop(0)
        value = extra_list.pop(0) if extra_list and not extra_list[0].startswith("--") else None
        if flag in args and value is not None:
            args[args.index(flag) + 1] = value
        else:
            args += [flag] + ([value] if value is not None else [])
    return args


def _cfg(name: str) -> list[str]:
    return ["train", "--config", f"{{f[{name}]}}", "--out", "{tmp}/run"]


# (id, args, exit code, phrase the one error line contains)
SDDCOMPRESS_ROWS = [
    ("lr-nan", _with(TRAIN, "--lr", "nan"), 2, "--lr must be a finite number, got nan"),
    ("lr-inf", _with(TRAIN, "--lr", "inf"), 2, "--lr must be a finite number"),
    ("lr-negative", _with(TRAIN, "--lr", "-1"), 2, "--lr must be > 0"),
    ("lr-not-a-number", _with(TRAIN, "--lr", "fast"), 2, "'fast' is not a valid float"),
    ("seed-negative", _with(TRAIN, "--seed", "-1"), 2, "--seed must be >= 0 and <= 4294967295"),
    ("seed-too-big", _with(TRAIN, "--seed", str(2**32)), 2, "numpy's seed range"),
    ("milestones-words", _with(TRAIN, "--milestones", "x,y"), 2, "--milestones must be a list of integers"),
    ("milestones-zero", _with(TRAIN, "--milestones", "0,5"), 2, "--milestones must be epochs >= 1"),
    ("input-size-huge", _with(TRAIN, "--input-size", "100000"), 2, "--input-size must be >= 8 and <= 1024"),
    ("input-size-tiny", _with(TRAIN, "--input-size", "4"), 2, "--input-size must be >= 8"),
    ("momentum-above-1", _with(TRAIN, "--momentum", "1.5"), 2, "--momentum must be >= 0 and < 1"),
    ("weight-decay-negative", _with(TRAIN, "--weight-decay", "-1e-4"), 2, "--weight-decay must be >= 0"),
    ("lr-decay-zero", _with(TRAIN, "--lr-decay", "0"), 2, "--lr-decay must be > 0"),
    ("precision-unknown", _with(TRAIN, "--precision", "fp8"), 2, "--precision must be one of auto, no, fp16, bf16"),
    ("precision-fp16-on-cpu", _with(TRAIN, "--precision", "fp16"), 2, "--precision fp16 needs a CUDA GPU"),
    ("schedule-unknown", _with(TRAIN, "--schedule", "linear"), 2, "--schedule must be one of step, cosine"),
    ("workers-negative", _with(TRAIN, "--workers", "-1"), 2, "--workers must be >= 0"),
    ("pipeline-unknown", _with(TRAIN, "--pipeline", "gpu"), 2, "--pipeline must be one of auto, device, jpeg, loader"),
    ("clip-grad-norm-negative", _with(TRAIN, "--clip-grad-norm", "-1"), 2, "--clip-grad-norm must be >= 0"),
    ("clip-grad-norm-nan", _with(TRAIN, "--clip-grad-norm", "nan"), 2, "--clip-grad-norm must be a finite number"),
    ("log-every-zero", _with(TRAIN, "--log-every", "0"), 2, "--log-every must be > 0"),
    ("grad-accum-zero", _with(TRAIN, "--grad-accum", "0"), 2, "--grad-accum must be > 0"),
    ("batch-size-zero", _with(TRAIN, "--batch-size", "0"), 2, "--batch-size must be > 0"),
    ("batch-size-not-divisible", _with(TRAIN, "--batch-size", "31", "--grad-accum", "2"), 2,
     "must be divisible by processes x --grad-accum"),
    ("batch-bigger-than-data", _with(TRAIN, "--batch-size", "100000"), 2, "larger than the training set"),
    ("epochs-negative", _with(TRAIN, "--epochs", "-3"), 2, "--epochs must be > 0"),
    ("skip-nonfinite-negative", _with(TRAIN, "--skip-nonfinite", "-1"), 2, "--skip-nonfinite must be >= 0"),
    ("max-train-batches-negative", _with(TRAIN, "--max-train-batches", "-1"), 2, "--max-train-batches must be >= 0"),
    ("resume-and-fresh", _with(TRAIN, "--resume", "--fresh"), 2, "contradict each other"),
    ("resume-nothing", _with(TRAIN, "--resume"), 2, "nothing to resume"),
    ("unknown-model", _with(TRAIN, "--model", "resnet8x5"), 2, "unknown model 'resnet8x5'"),
    ("unknown-dataset", _with(TRAIN, "--data", "mnist"), 2, "unknown dataset 'mnist'"),
    ("out-under-a-file", _with(TRAIN, "--out", "{f[text]}/sub"), 2, "is not writable"),
    ("out-empty", _with(TRAIN, "--out", ""), 2, "--out is empty (an unset shell variable?)"),
    ("out-blank-fresh", _with(TRAIN, "--out", " ", "--fresh"), 2, "--out is empty"),
    ("out-not-a-run-fresh", _with(TRAIN, "--out", "{f[user_folder]}", "--fresh"), 2,
     "is not an sddcompress run and is not empty (checkpoints/precious.bin)"),
    ("out-someone-elses-metrics", _with(TRAIN, "--out", "{f[metrics_folder]}"), 2,
     "is not an sddcompress run and is not empty (metrics.csv, metrics.jsonl)"),
    ("out-is-a-file", _with(TRAIN, "--out", "{f[text]}"), 2, "is a file; pass another --out"),
    ("all-images-unreadable", _with(TRAIN, "--data", "imagefolder:{f[unreadable_images]}", "--skip-bad-images"), 2,
     "is unreadable (2 skipped)"),
    ("distill-out-empty", _with(DISTILL, "--out", ""), 2, "--out is empty"),
    ("labelled-fraction-zero", _with(DISTILL, "--labelled-fraction", "0"), 2, "--labelled-fraction must be > 0 and <= 1"),
    ("labelled-fraction-above-1", _with(DISTILL, "--labelled-fraction", "1.5"), 2,
     "--labelled-fraction must be > 0 and <= 1"),
    ("labelled-fraction-negative", _with(TRAIN, "--labelled-fraction", "-0.1"), 2,
     "--labelled-fraction must be > 0 and <= 1"),
    ("labelled-fraction-nan", _with(DISTILL, "--labelled-fraction", "nan"), 2,
     "--labelled-fraction must be a finite number"),
    ("labelled-fraction-empties-a-class", _with(DISTILL, "--labelled-fraction", "0.001"), 2,
     "without a labelled image; pass --labelled-fraction 0.0036 or more"),
    ("labelled-fraction-smaller-than-a-batch", _with(TRAIN, "--labelled-fraction", "0.01", "--batch-size", "64"), 2,
     "larger than the training set (10: the labelled images of --labelled-fraction 0.01)"),
    ("config-labelled-fraction-word", _cfg("cfg_labelled_fraction_word"), 2, "labelled_fraction in config"),
    ("unlabelled-missing", _with(DISTILL, "--unlabelled", "{tmp}/no-such-folder"), 2,
     "no-such-folder' does not exist; pass a folder of images"),
    ("unlabelled-is-a-file", _with(DISTILL, "--unlabelled", "{f[text]}"), 2,
     "is a file; pass the folder that holds the images"),
    ("unlabelled-empty-string", _with(DISTILL, "--unlabelled", ""), 2, "--unlabelled is empty"),
    ("unlabelled-no-images", _with(DISTILL, "--unlabelled", "{f[no_images]}"), 2, "holds no image files"),
    ("unlabelled-unreadable-image", _with(DISTILL, "--unlabelled", "{f[unreadable_unlabelled]}"), 2,
     "cannot read image"),
    ("unlabelled-all-unreadable-skipped", _with(DISTILL, "--unlabelled", "{f[unreadable_unlabelled]}",
                                                "--skip-bad-images"), 2, "every image under --unlabelled"),
    ("unlabelled-with-ce", _with(TRAIN, "--unlabelled", "{f[unlabelled_ok]}"), 2,
     "--method ce has none: distil (e.g. --method sdd-dkd with --teacher) or leave --unlabelled out"),
    ("unlabelled-with-distill-ce", _with(DISTILL, "--method", "ce", "--unlabelled", "{f[unlabelled_ok]}"), 2,
     "--method ce has none"),
    ("gamma-negative", _with(DISTILL, "--gamma", "-1"), 2, "--gamma must be >= 0"),
    ("alpha-negative", _with(DISTILL, "--alpha", "-0.5"), 2, "--alpha must be >= 0"),
    ("beta-nan", _with(DISTILL, "--beta", "nan"), 2, "--beta must be a finite number"),
    ("temperature-nan", _with(DISTILL, "--temperature", "nan"), 2, "--temperature must be a finite number"),
    ("temperature-zero", _with(DISTILL, "--temperature", "0"), 2, "--temperature must be > 0"),
    ("ce-weight-negative", _with(DISTILL, "--ce-weight", "-0.5"), 2, "--ce-weight must be >= 0"),
    ("kd-weight-inf", _with(DISTILL, "--kd-weight", "inf"), 2, "--kd-weight must be a finite number"),
    ("warmup-negative", _with(DISTILL, "--warmup-epochs", "-1"), 2, "--warmup-epochs must be >= 0"),
    ("scales-zero", _with(DISTILL, "--scales", "0,2"), 2, "--scales must be positive integers"),
    ("scales-descending", _with(DISTILL, "--scales", "4,2,1"), 2, "--scales must start with 1 and be strictly ascending"),
    ("msd-window-nan", _with(MSD, "--msd-window", "nan"), 2, "--msd-window must be a finite number"),
    ("msd-window-below-1", _with(MSD, "--msd-window", "0.5"), 2, "--msd-window must be >= 1"),
    ("msd-tau-nan", _with(MSD, "--msd-tau", "nan"), 2, "--msd-tau must be a finite number"),
    ("msd-tau-zero", _with(MSD, "--msd-tau", "0"), 2, "--msd-tau must be > 0"),
    ("msd-feature-weight-inf", _with(MSD, "--msd-feature-weight", "inf"), 2,
     "--msd-feature-weight must be a finite number"),
    ("msd-sample-weight-negative", _with(MSD, "--msd-sample-weight", "-1"), 2, "--msd-sample-weight must be >= 0"),
    ("msd-ramp-epochs-negative", _with(MSD, "--msd-ramp-epochs", "-1"), 2, "--msd-ramp-epochs must be >= 0"),
    ("msd-scales-zero", _with(MSD, "--msd-scales", "0,2"), 2, "--msd-scales must be positive integers"),
    ("msd-scales-words", _with(MSD, "--msd-scales", "1,x"), 2, "--msd-scales must be positive integers"),
    ("msd-scales-larger-than-the-map", _with(DISTILL, "--method", "sdd-dkd+msdcrd", "--msd-scales", "1,2,8"), 2,
     "smaller than the largest MSD scale 8 (--msd-scales 1,2,8); use a larger --input-size, smaller --msd-scales,"),
    ("sdd-scales-larger-than-the-map", _with(DISTILL, "--method", "sdd-dkd+msdcrd", "--scales", "1,2,8"), 2,
     "smaller than the largest SDD scale 8 (--scales 1,2,8); use a larger --input-size, smaller --scales,"),
    ("msd-space-unknown", _with(MSD, "--msd-space", "pixels"), 2, "--msd-space must be one of features, logits"),
    ("msd-categorise-unknown", _with(MSD, "--msd-categorise", "all"), 2, "--msd-categorise must be one of sdd, none"),
    ("config-msd-tau-nan", ["distill", "--config", "{f[cfg_msd_tau_nan]}", "--teacher-ckpt", "{ckpt}",
                            "--out", "{tmp}/run", *tiny_args()], 2, "msd_tau in config"),
    ("teacher-ckpt-text", _with(DISTILL, "--teacher-ckpt", "{f[text]}"), 2, "is corrupt or not a checkpoint"),
    ("teacher-ckpt-int64-weights", _with(DISTILL, "--teacher-ckpt", "{f[int64_ckpt]}"), 2, "as integers"),
    ("teacher-state-dict-other-classes", _with(DISTILL, "--teacher-ckpt", "{f[sd100]}"), 2,
     "has 100 classes, not 10 (tensor 'fc.weight' is (100, 64) in the file but (10, 64) in the model); a teacher for "
     "digits needs its 10 classes: pass one trained on it (`sddcompress train --model resnet20 --data digits`)"),
    ("teacher-pretrained-imagenet-classes-offline",
     ["distill", "--teacher", "resnet18", "--teacher-pretrained", "--student", "resnet20", "--out", "{tmp}/run",
      *tiny_args()], 2, "pretrained 'resnet18' has ImageNet's classes, the data has 10: a fresh classifier would "
     "teach nothing. Fine-tune it first: `sddcompress train --model resnet18 --pretrained --data digits`"),
    ("teacher-ckpt-nan-weights", _with(DISTILL, "--teacher-ckpt", "{f[nan_ckpt]}"), 3, "holds non-finite weights"),
    ("config-lr-nan", _cfg("cfg_lr_nan"), 2, "lr in config"),
    ("config-epochs-word", _cfg("cfg_epochs_word"), 2, "epochs in config"),
    ("config-milestones-words", _cfg("cfg_milestones_words"), 2, "milestones in config"),
    ("config-seed-fraction", _cfg("cfg_seed_fraction"), 2, "seed in config"),
    ("config-flag-not-bool", _cfg("cfg_flag_word"), 2, "must be true or false"),
    ("config-momentum-mapping", _cfg("cfg_momentum_map"), 2, "momentum in config"),
    ("config-duplicate-key", _cfg("cfg_duplicate"), 2, "'epochs' is given twice (lines 2 and 4); keep one"),
    ("config-duplicate-nested-key", _cfg("cfg_duplicate_flow"), 2, "'lr' is given twice (line 1)"),
    ("config-nested-anchors", _cfg("cfg_anchors"), 2, "milestones in config"),
    ("config-not-a-mapping", _cfg("cfg_list"), 2, "must be a mapping of option: value"),
    ("config-bad-yaml", _cfg("cfg_broken"), 2, "is not valid YAML"),
    ("config-unknown-key", _cfg("cfg_unknown"), 2, "unknown key(s) learning_rate"),
    ("config-is-a-directory", ["train", "--config", "{tmp}", "--out", "{tmp}/run"], 2, "is a directory"),
    ("config-missing", ["train", "--config", "{tmp}/none.yaml"], 2, "not found (shipped configs:"),
    ("eval-ckpt-directory", ["eval", "--ckpt", "{tmp}"], 2, "is a directory; pass the .pt file"),
    ("eval-ckpt-missing", ["eval", "--ckpt", "{tmp}/none.pt"], 2, "none.pt' not found"),
    ("eval-ckpt-text", ["eval", "--ckpt", "{f[text]}"], 2, "is corrupt or not a checkpoint"),
    ("eval-ckpt-random-bytes", ["eval", "--ckpt", "{f[random]}"], 2, "is corrupt or not a checkpoint"),
    ("eval-ckpt-empty", ["eval", "--ckpt", "{f[empty]}"], 2, "is corrupt or not a checkpoint"),
    ("eval-ckpt-with-code", ["eval", "--ckpt", "{f[pickled_object]}"], 2, "objects other than tensors"),
    ("eval-ckpt-not-sddcompress", ["eval", "--ckpt", "{f[list_ckpt]}"], 2, "not an sddcompress checkpoint"),
    ("eval-ckpt-nan-weights", ["eval", "--ckpt", "{f[nan_ckpt]}"], 3, "holds non-finite weights"),
    ("eval-ckpt-int64-weights", ["eval", "--ckpt", "{f[int64_ckpt]}"], 2,
     "stores 107 of the 'resnet20' weights as integers (e.g. conv1.weight as int64)"),
    ("eval-safetensors-int64-weights", ["eval", "--ckpt", "{f[int64_safetensors]}", "--model", "resnet20", "--data",
                                        "digits"], 2, "where the model's are floating point"),
    ("eval-logits-overflow", ["eval", "--ckpt", "{f[overflow_ckpt]}"], 2, "gives non-finite logits on digits"),
    ("eval-state-dict-other-classes", ["eval", "--ckpt", "{f[sd100]}", "--model", "resnet20", "--num-classes", "10",
                                       "--input-size", "16"], 2, "has 100 classes, not 10 (tensor 'fc.weight' is "
     "(100, 64) in the file but (10, 64) in the model); pass --num-classes 100"),
    ("eval-batch-size-zero", ["eval", "--ckpt", "{ckpt}", "--batch-size", "0"], 2, "--batch-size must be > 0"),
    ("eval-input-size-huge", ["eval", "--ckpt", "{ckpt}", "--input-size", "100000"], 2, "--input-size must be"),
    ("eval-wrong-model", ["eval", "--ckpt", "{ckpt}", "--model", "resnet32"], 2, "holds a 'resnet20', not"),
    ("eval-unknown-data", ["eval", "--ckpt", "{ckpt}", "--data", "mnist"], 2, "unknown dataset 'mnist'"),
    ("export-atol-nan", ["export", "--ckpt", "{ckpt}", "--atol", "nan"], 2, "--atol must be a finite number"),
    ("export-min-agreement", ["export", "--ckpt", "{ckpt}", "--min-agreement", "200"], 2, "percentage in 0..100"),
    ("export-opset", ["export", "--ckpt", "{ckpt}", "--opset", "5"], 2, "--opset 5 is not supported"),
    ("export-calib-negative", ["export", "--ckpt", "{ckpt}", "--calib-size", "-1"], 2, "--calib-size must be >= 0"),
    ("export-ckpt-random", ["export", "--ckpt", "{f[random]}"], 2, "is corrupt or not a checkpoint"),
    ("export-ckpt-nan", ["export", "--ckpt", "{f[nan_ckpt]}", "--out", "{tmp}/x"], 3, "holds non-finite weights"),
    ("export-out-empty", ["export", "--ckpt", "{ckpt}", "--out", ""], 2, "--out is empty"),
    ("export-out-under-a-file", ["export", "--ckpt", "{ckpt}", "--out", "{f[text]}/x"], 2, "is not writable"),
    ("artifact-not-onnx", ["eval-artifact", "--model", "{f[text]}"], 2, "neither an .onnx file"),
    ("artifact-directory", ["eval-artifact", "--model", "{f[onnx_dir]}", "--data", "{npz}"], 2, "is a directory"),
    ("artifact-garbage-onnx", ["eval-artifact", "--model", "{f[garbage_onnx]}", "--data", "{npz}"], 2,
     "is not an ONNX model"),
    ("artifact-batch-size-zero", ["eval-artifact", "--model", "{onnx}", "--batch-size", "0"], 2,
     "--batch-size must be > 0"),
    ("artifact-threads-zero", ["eval-artifact", "--model", "{onnx}", "--threads", "0"], 2, "--threads"),
    ("artifact-tall-images", ["eval-artifact", "--model", "{onnx}", "--data", "{f[tall_npz]}"], 2,
     "expected N x 3 x S x S"),
    ("artifact-labels-out-of-range", ["eval-artifact", "--model", "{onnx}", "--data", "{f[labels_npz]}"], 2,
     "but the model has 10 classes"),
    ("artifact-npz-directory", ["eval-artifact", "--model", "{onnx}", "--data", "{f[npz_dir]}"], 2,
     "is a directory; pass the data.npz"),
    ("artifact-no-val-images", ["eval-artifact", "--model", "{onnx}", "--data", "{f[empty_val_npz]}"], 2,
     "holds no validation images (val_images is empty); write it again with `sddcompress export --val-size N`"),
    ("artifact-two-class-data", ["eval-artifact", "--model", "{onnx}", "--data", "{f[two_class_npz]}"], 2,
     "holds 2 classes (cat, dog) but the model has 10 (0, 1, 2, 3, ...)"),
    ("artifact-float-raw-pixels", ["eval-artifact", "--model", "{onnx}", "--data", "{f[raw_float_npz]}"], 2,
     "store them as uint8 and they are normalised on reading"),
    ("export-calib-file-no-val-images", ["export", "--ckpt", "{ckpt}", "--calib-file", "{f[empty_val_npz]}", "--out",
                                         "{tmp}/x"], 2, "holds no validation images"),
    ("export-calib-file-no-calib-images", ["export", "--ckpt", "{ckpt}", "--ort-int8", "--calib-file",
                                           "{f[no_calib_npz]}", "--out", "{tmp}/x"], 2,
     "holds no calibration images (calib_images is empty)"),
    ("export-calib-file-other-classes", ["export", "--ckpt", "{ckpt}", "--calib-file", "{f[renamed_npz]}", "--out",
                                         "{tmp}/x"], 2, "names class 0 'c0' but the model calls it '0'"),
    ("benchmark-batch-sizes", ["benchmark", "--batch-sizes", "1,x"], 2, "expected comma-separated integers"),
    ("benchmark-min-seconds-nan", ["benchmark", "--teacher", "{ckpt}", "--student", "{ckpt}", "--min-seconds", "nan"],
     2, "--min-seconds >= 0"),
    ("benchmark-compare-not-json", ["benchmark", "--compare", "{f[text]}", "{f[text]}"], 2,
     "cannot read benchmark results"),
    ("benchmark-out-empty", ["benchmark", "--teacher", "{ckpt}", "--student", "{ckpt}", "--out", ""], 2,
     "--out is empty"),
    ("quickstart-out-empty", ["quickstart", "--out", " "], 2, "--out is empty"),
    ("quickstart-epochs-text", ["quickstart", "--epochs", "many"], 2, "'many' is not a valid integer"),
    ("unknown-command", ["distil"], 2, "No such command 'distil'"),
]

DEPLOY_ROWS = [
    ("batch-size-zero", ["eval", "{onnx}", "--data", "{npz}", "--batch-size", "0"], 2, "--batch-size: must be >= 1"),
    ("batch-size-word", ["eval", "{onnx}", "--data", "{npz}", "--batch-size", "x"], 2, "expected an integer"),
    ("threads-negative", ["eval", "{onnx}", "--data", "{npz}", "--threads", "-2"], 2, "--threads: must be >= 1"),
    ("tall-images", ["eval", "{onnx}", "--data", "{f[tall_npz]}"], 2, "expected N x 3 x S x S"),
    ("labels-out-of-range", ["eval", "{onnx}", "--data", "{f[labels_npz]}"], 2, "val_labels range 100..109"),
    ("labels-missing", ["eval", "{onnx}", "--data", "{f[nolabels_npz]}"], 2, "lacks val_labels"),
    ("labels-short", ["eval", "{onnx}", "--data", "{f[short_labels_npz]}"], 2, "expected one integer label per image"),
    ("nan-images", ["eval", "{onnx}", "--data", "{f[nan_npz]}"], 2, "holds NaN/inf pixel values"),
    ("npz-is-directory", ["eval", "{onnx}", "--data", "{f[npz_dir]}"], 2, "is a directory"),
    ("npz-is-text", ["eval", "{onnx}", "--data", "{f[text]}"], 2, "is not a readable .npz tensor file"),
    ("npz-missing", ["eval", "{onnx}", "--data", "{tmp}/none.npz"], 2, "none.npz' does not exist"),
    ("model-not-onnx", ["eval", "{f[text]}", "--data", "{npz}"], 2, "neither an .onnx file"),
    ("onnx-missing", ["eval", "{tmp}/none.onnx", "--data", "{npz}"], 2, "none.onnx' not found"),
    ("onnx-directory", ["info", "{f[onnx_dir]}"], 2, "is a directory"),
    ("onnx-garbage", ["info", "{f[garbage_onnx]}"], 2, "is not an ONNX model"),
    ("engine-sidecar-broken", ["info", "{f[engine]}"], 2, "sidecar"),
    ("engine-sidecar-not-object", ["info", "{f[engine_list]}"], 2, "is broken"),
    ("engine-sidecar-missing", ["info", "{f[engine_alone]}"], 2, "is missing"),
    ("quantize-out-missing-folder", ["quantize", "{onnx}", "--data", "{npz}", "--out", "{tmp}/no/such/q.onnx"], 2,
     "does not exist; create it"),
    ("quantize-out-directory", ["quantize", "{onnx}", "--data", "{npz}", "--out", "{tmp}"], 2, "is a directory"),
    ("quantize-out-under-a-file", ["quantize", "{onnx}", "--data", "{npz}", "--out", "{f[text]}/q.onnx"], 2,
     "cannot write --out"),
    ("quantize-out-empty", ["quantize", "{onnx}", "--data", "{npz}", "--out", ""], 2, "--out is empty"),
    ("quantize-calib-size-zero", ["quantize", "{onnx}", "--data", "{npz}", "--out", "{tmp}/q.onnx",
                                  "--calib-size", "0"], 2, "--calib-size: must be >= 1"),
    ("quantize-wrong-size-data", ["quantize", "{onnx}", "--data", "{f[small_npz]}", "--out", "{tmp}/q.onnx"], 2,
     "holds 8px images but the model expects 16px"),
    ("no-val-images", ["eval", "{onnx}", "--data", "{f[empty_val_npz]}"], 2,
     "holds no validation images (val_images is empty)"),
    ("two-class-data", ["eval", "{onnx}", "--data", "{f[two_class_npz]}"], 2,
     "holds 2 classes (cat, dog) but the model has 10 (0, 1, 2, 3, ...); use the data.npz exported for this model"),
    ("int8-two-class-data", ["eval", "{int8}", "--data", "{f[two_class_npz]}"], 2, "holds 2 classes (cat, dog)"),
    ("renamed-classes", ["eval", "{onnx}", "--data", "{f[renamed_npz]}"], 2,
     "names class 0 'c0' but the model calls it '0'"),
    ("float-raw-pixels", ["eval", "{onnx}", "--data", "{f[raw_float_npz]}"], 2,
     "val_images spans 0..255, outside"),
    ("other-normalisation", ["eval", "{onnx}", "--data", "{f[other_mean_npz]}"], 2,
     "holds images normalised with mean [0.5, 0.5, 0.5] but the model expects mean"),
    ("integer-pixels-above-255", ["eval", "{onnx}", "--data", "{f[wide_int_npz]}"], 2,
     "val_images holds integers 300..300; raw pixels must be 0..255"),
    ("quantize-no-calib-images", ["quantize", "{onnx}", "--data", "{f[no_calib_npz]}", "--out", "{tmp}/q.onnx",
                                  "--calib-size", "10"], 2,
     "holds no calibration images (calib_images is empty); write it again with `sddcompress export --calib-size N`"),
    ("quantize-int8-model", ["quantize", "{int8}", "--data", "{npz}", "--out", "{tmp}/q.onnx"], 2,
     "is already INT8 (it holds DequantizeLinear, QuantizeLinear nodes); quantize the fp32 model.onnx"),
    ("quantize-two-class-data", ["quantize", "{onnx}", "--data", "{f[two_class_npz]}", "--out", "{tmp}/q.onnx"], 2,
     "holds 2 classes"),
    ("build-trt-max-batch-zero", ["build-trt", "{onnx}", "--max-batch", "0"], 2, "--max-batch: must be >= 1"),
    ("build-trt-precision", ["build-trt", "{onnx}", "--precision", "int4"], 2, "invalid choice: 'int4'"),
    ("unknown-command", ["bogus"], 2, "invalid choice: 'bogus'"),
    ("missing-arguments", ["eval"], 2, "the following arguments are required"),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, teacher_ckpt, exported) -> dict:
    """Every broken input the table uses, built once."""
    from PIL import Image

    d = tmp_path_factory.mktemp("bad")
    f: dict = {}

    def write(name: str, data: str | bytes) -> str:
        path = d / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(path)

    f["text"] = write("notes.txt", "hello, I am not a checkpoint\n")
    f["random"] = write("random.pt", np.random.default_rng(0).bytes(4096))
    f["empty"] = write("empty.pt", b"")
    torch.save({"when": datetime.date(2026, 1, 1)}, d / "object.pt")
    f["pickled_object"] = str(d / "object.pt")
    torch.save([1, 2, 3], d / "list.pt")
    f["list_ckpt"] = str(d / "list.pt")
    ckpt = torch.load(teacher_ckpt, weights_only=True)
    first = next(k for k, v in ckpt["model"]["state_dict"].items() if v.is_floating_point())
    ckpt["model"]["state_dict"][first] = torch.full_like(ckpt["model"]["state_dict"][first], float("nan"))
    torch.save(ckpt, d / "nan.pt")
    f["nan_ckpt"] = str(d / "nan.pt")
    ckpt = torch.load(teacher_ckpt, weights_only=True)
    weights = ckpt["model"]["state_dict"]
    as_int64 = {k: v.long() if v.is_floating_point() else v for k, v in weights.items()}
    torch.save({**ckpt, "model": {**ckpt["model"], "state_dict": as_int64}}, d / "int64.pt")
    f["int64_ckpt"] = str(d / "int64.pt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in as_int64.items()}, d / "r20.safetensors")
    f["int64_safetensors"] = str(d / "r20.safetensors")
    overflowing = {**weights, "fc.weight": weights["fc.weight"] * 3e38}  # finite, but the logits overflow
    assert torch.isfinite(overflowing["fc.weight"]).all()
    torch.save({**ckpt, "model": {**ckpt["model"], "state_dict": overflowing}}, d / "overflow.pt")
    f["overflow_ckpt"] = str(d / "overflow.pt")
    from sddcompress.models import build_model

    torch.save(build_model("resnet20", 100, 16).state_dict(), d / "sd100.pt")  # a plain state dict, 100 classes
    f["sd100"] = str(d / "sd100.pt")
    for name, text in {"cfg_lr_nan": "model: resnet20\nlr: .nan\n", "cfg_epochs_word": 'epochs: "ten"\n',
                       "cfg_milestones_words": "milestones: [a, b]\n", "cfg_seed_fraction": "seed: 1.5\n",
                       "cfg_flag_word": "cpu: sometimes\n", "cfg_momentum_map": "momentum: {a: 1}\n",
                       "cfg_list": "- lr\n- 0.1\n", "cfg_broken": "lr: [1\n",
                       "cfg_unknown": "learning_rate: 0.1\n",
                       "cfg_labelled_fraction_word": "labelled_fraction: half\n",
                       "cfg_duplicate": "model: resnet20\nepochs: 1\nlr: 0.1\nepochs: 3\n",
                       "cfg_duplicate_flow": "{lr: 0.1, epochs: 2, lr: 0.2}\n",
                       "cfg_anchors": "milestones: [&a [x, x, x, x, x, x, x, x], &b [*a, *a, *a, *a, *a, *a, *a, *a], "
                                      "&c [*b, *b, *b, *b, *b, *b, *b, *b], [*c, *c, *c, *c, *c, *c, *c, *c]]\n",
                       "cfg_msd_tau_nan": "method: msdcrd\nteacher: resnet20\nstudent: resnet20\nmsd_tau: .nan\n"}.items():
        f[name] = write(f"{name}.yaml", text)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (d / "imgs" / split / cls).mkdir(parents=True)
            (d / "imgs" / split / cls / "x.png").write_bytes(b"not a png")
    f["unreadable_images"] = str(d / "imgs")
    (d / "no_images" / "sub").mkdir(parents=True)
    (d / "no_images" / "sub" / "readme.txt").write_text("no pictures here\n")
    f["no_images"] = str(d / "no_images")
    (d / "bad_unlabelled" / "deep").mkdir(parents=True)
    (d / "bad_unlabelled" / "deep" / "x.jpg").write_bytes(b"not a jpeg")
    f["unreadable_unlabelled"] = str(d / "bad_unlabelled")
    (d / "unlabelled").mkdir()
    Image.new("RGB", (12, 20), (10, 200, 30)).save(d / "unlabelled" / "a.png")
    f["unlabelled_ok"] = str(d / "unlabelled")
    (d / "userproj" / "checkpoints").mkdir(parents=True)
    (d / "userproj" / "checkpoints" / "precious.bin").write_bytes(b"\x00\x01weights")
    f["user_folder"] = str(d / "userproj")
    (d / "their_metrics").mkdir()
    (d / "their_metrics" / "metrics.jsonl").write_text('{"epoch": 3, "val_top1": 91.5}\n')
    (d / "their_metrics" / "metrics.csv").write_text("epoch,val_top1\n3,91.5\n")
    f["metrics_folder"] = str(d / "their_metrics")
    (d / "dir.onnx").mkdir()
    f["onnx_dir"] = str(d / "dir.onnx")
    (d / "dir.npz").mkdir()
    f["npz_dir"] = str(d / "dir.npz")
    f["garbage_onnx"] = write("garbage.onnx", b"\x00garbage\xff" * 10)
    f["engine"] = write("m.engine", b"x")
    write("m.engine.json", "{broken")
    f["engine_list"] = write("list.engine", b"x")
    write("list.engine.json", "[1, 2]")
    f["engine_alone"] = write("alone.engine", b"x")
    z = dict(np.load(exported["tensor_file"]["path"]))
    n = len(z["val_labels"])
    variants = {"tall_npz": {"val_images": np.zeros((n, 3, 20, 16), np.float32)},
                "labels_npz": {"val_labels": z["val_labels"] + 100},
                "short_labels_npz": {"val_labels": z["val_labels"][:3]},
                "nan_npz": {"val_images": np.full_like(z["val_images"], np.nan)},
                "small_npz": {"val_images": np.zeros((n, 3, 8, 8), np.float32),
                              "calib_images": np.zeros((4, 3, 8, 8), np.float32)},
                "empty_val_npz": {"val_images": z["val_images"][:0], "val_labels": z["val_labels"][:0]},
                "no_calib_npz": {"calib_images": z["calib_images"][:0], "calib_labels": z["calib_labels"][:0]},
                "two_class_npz": {"val_labels": z["val_labels"] % 2, "class_names": np.array(["cat", "dog"])},
                "renamed_npz": {"class_names": np.array([f"c{i}" for i in range(10)])},
                "raw_float_npz": {"val_images": raw_pixels(z, "val_images").astype(np.float32)},
                "other_mean_npz": {"mean": np.full(3, 0.5, np.float32)},
                "wide_int_npz": {"val_images": np.full(z["val_images"].shape, 300, np.int16)}}
    for name, change in variants.items():
        np.savez(d / f"{name}.npz", **{**z, **change})
        f[name] = str(d / f"{name}.npz")
    np.savez(d / "nolabels.npz", calib_images=z["calib_images"], val_images=z["val_images"])
    f["nolabels_npz"] = str(d / "nolabels.npz")
    return f


def raw_pixels(z: dict, key: str) -> np.ndarray:
    """The uint8 pixels an exported tensor file's normalised images were made from."""
    mean, std = z["mean"][:, None, None], z["std"][:, None, None]
    return np.clip(np.round((z[key] * std + mean) * 255), 0, 255).astype(np.uint8)


def _fill(args: list[str], tmp_path, teacher_ckpt, exported, bad_files) -> list[str]:
    values = {"tmp": str(tmp_path), "ckpt": teacher_ckpt, "onnx": exported["artifacts"]["onnx"]["path"],
              "int8": exported["artifacts"]["ort_int8"]["path"],
              "npz": exported["tensor_file"]["path"], "f": bad_files}
    return [a.format(**values) for a in args]


def assert_row(result, code: int, phrase: str) -> None:
    got, _, err = result
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert len(lines[0]) <= len("error: ") + MAX_ERROR_CHARS, len(lines[0])
    assert phrase in lines[0], lines[0]
    assert got == code, (got, lines[0])


@pytest.mark.parametrize("args, code, phrase", [r[1:] for r in SDDCOMPRESS_ROWS], ids=[r[0] for r in SDDCOMPRESS_ROWS])
def test_sddcompress_bad_input(cli, tmp_path, teacher_ckpt, exported, bad_files, monkeypatch, args, code, phrase):
    monkeypatch.chdir(tmp_path)  # default output folders land in the test's folder
    assert_row(cli(*_fill(args, tmp_path, teacher_ckpt, exported, bad_files)), code, phrase)


@pytest.mark.parametrize("args, code, phrase", [r[1:] for r in DEPLOY_ROWS], ids=[r[0] for r in DEPLOY_ROWS])
def test_deploy_bad_input(deploy, tmp_path, teacher_ckpt, exported, bad_files, args, code, phrase):
    assert_row(deploy(*_fill(args, tmp_path, teacher_ckpt, exported, bad_files)), code, phrase)


def test_the_table_is_large_enough():
    assert len(SDDCOMPRESS_ROWS) + len(DEPLOY_ROWS) >= 60
    assert len({r[0] for r in SDDCOMPRESS_ROWS}) == len(SDDCOMPRESS_ROWS)
    assert len({r[0] for r in DEPLOY_ROWS}) == len(DEPLOY_ROWS)


def test_msd_choices_are_the_losses_own():
    from sddcompress.engine.config import RULES
    from sddcompress.losses.msdcrd import CATEGORISE, SPACES

    assert RULES["msd_space"].choices == SPACES and RULES["msd_categorise"].choices == CATEGORISE


def test_a_long_error_keeps_its_start_and_its_fix():
    line = error_line("config 'x.yaml': lr must be a number, got [" + "1, " * 10_000 + "1]; fix the value\nsecond")
    assert len(line) == MAX_ERROR_CHARS
    assert line.startswith("config 'x.yaml': lr must be a number") and line.endswith("1]; fix the value")
    assert " ... " in line
    assert error_line("short\nsecond line") == "short"


def test_raw_pixels_are_normalised_with_the_models_own_preprocessing_by_every_reader(deploy, cli, exported, tmp_path):
    """A tensor file of uint8 pixels scores as the exported float file does (fp32 and INT8, both CLIs) and
    calibrates `quantize`; each reader says it normalised them."""
    import json

    z = dict(np.load(exported["tensor_file"]["path"]))
    raw = tmp_path / "raw.npz"
    np.savez(raw, **{**z, "val_images": raw_pixels(z, "val_images"), "calib_images": raw_pixels(z, "calib_images")})
    for model in (exported["artifacts"]["onnx"]["path"], exported["artifacts"]["ort_int8"]["path"]):
        code, out, err = deploy("eval", model, "--data", str(raw))
        assert code == 0, err
        got = json.loads(out)
        code, out, err = deploy("eval", model, "--data", exported["tensor_file"]["path"])
        assert code == 0, err
        want = json.loads(out)
        assert got["top1"] == want["top1"] and got["count"] == want["count"] == len(z["val_labels"])
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4, abs=1e-4)
        assert "normalised on reading with the model's mean" in got["input"] and "input" not in want
        code, out, err = cli("eval-artifact", "--model", model, "--data", str(raw), "--json")
        assert code == 0, err
        assert json.loads(out)["top1"] == want["top1"]
    code, out, err = deploy("quantize", exported["artifacts"]["onnx"]["path"], "--data", str(raw),
                            "--out", str(tmp_path / "q.onnx"), "--calib-size", "32", "--method", "minmax",
                            "--int8-keep-float", "none")
    assert code == 0, err
    assert "integer pixels" in json.loads(out)["input"]
