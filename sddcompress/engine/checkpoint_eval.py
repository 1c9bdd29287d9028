"""Evaluate a saved checkpoint: rebuild its model, load its weights, score the validation split."""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader

from ..data import DataBundle, SeededTransform, load_dataset
from ..data.preprocessing import model_preprocessing, preprocessed_as
from ..errors import UserError
from ..models import build_model
from .checkpoint import FOREIGN, load_checkpoint, load_model_weights
from .config import resolve_workers
from .evaluate import evaluate
from .option_rules import check_option


def model_from_checkpoint(path: str, model: str | None = None, num_classes: int | None = None,
                          input_size: int | None = None) -> tuple[torch.nn.Module, dict]:
    """The plain model a checkpoint holds, in eval mode, and the checkpoint.

    Our checkpoints say their model, class count and input size; for any other state dict (plain,
    .safetensors, the CIFAR teacher zoo) pass them: `model` always, `num_classes` unless the
    classifier shows it, `input_size` unless the model is a 32-px CIFAR model. The returned
    checkpoint then carries a complete model record like ours.
    """
    ckpt = load_checkpoint(path)
    record = ckpt["model"]
    if ckpt.get("format") == FOREIGN:
        record.update(foreign_model_record(path, ckpt, model, num_classes, input_size))
    elif num_classes is not None and num_classes != record.get("num_classes"):
        raise UserError(f"'{path}' has {record.get('num_classes')} classes, not {num_classes}; drop --num-classes")
    name = model or record.get("name")
    net = build_model(name, record["num_classes"], record.get("input_size") or 32,
                      imagenet_stem=bool(record.get("imagenet_stem")))
    load_model_weights(net, ckpt, name, record["num_classes"], path)
    return net.eval(), ckpt


def foreign_model_record(path: str, ckpt: dict, model: str | None, num_classes: int | None,
                         input_size: int | None) -> dict:
    """name / num_classes / input_size for a state dict from elsewhere, from the options or the file."""
    from ..models.foreign_checkpoints import infer_num_classes
    from ..models.registry import REGISTRY

    if not model:
        raise UserError(f"'{path}' is a state dict from elsewhere and does not say its architecture; pass "
                        "--model NAME (see `sddcompress models`; teacher-zoo files: resnet32x4, wrn_40_2, vgg13, ...)")
    fixed_size = model in REGISTRY and REGISTRY[model].family in ("cifar-resnet", "wrn", "vgg", "shufflenet",
                                                                  "paper-cifar")
    if input_size is None and not fixed_size:
        raise UserError(f"'{path}' does not say its input size; pass --input-size (e.g. 32 for CIFAR, 224 for "
                        "ImageNet-style data)")
    size = input_size or 32
    classes = num_classes
    if classes is None:
        classes = infer_num_classes(build_model(model, 2, size), model, ckpt["model"]["state_dict"])
        if classes is None:
            raise UserError(f"cannot tell the class count of '{path}'; pass --num-classes")
    return {"name": model, "num_classes": classes, "input_size": size}


def dataset_for_checkpoint(ckpt: dict, data: str, data_dir: str | None, size: int | None) -> DataBundle:
    """The dataset, preprocessed as the checkpoint's own preprocessing record says (a model started from
    pretrained weights, or distilled from one, keeps those weights' statistics, not the dataset's); a
    state dict from elsewhere does not say, so it gets the dataset's. A run trained with --skip-bad-images
    is scored and exported the same way: without the images it could not read (`skipped_images` counts them)."""
    config = ckpt.get("config")
    skip_bad = isinstance(config, dict) and config.get("skip_bad_images") is True
    bundle = load_dataset(data, data_dir, size, skip_bad_images=skip_bad)
    record = model_preprocessing(ckpt)
    return bundle if record is None else preprocessed_as(bundle, record)


def evaluate_checkpoint(path: str, model: str | None, data: str | None, data_dir: str | None,
                        input_size: int | None, batch_size: int, num_classes: int | None = None) -> dict:
    if batch_size <= 0:
        raise UserError(f"--batch-size must be > 0, got {batch_size}")
    check_option("input_size", input_size)
    net, ckpt = model_from_checkpoint(path, model, num_classes, input_size)
    data = data or ckpt.get("data")
    if data is None:
        raise UserError("pass --data: the checkpoint does not say which dataset it was trained on")
    size = input_size or ckpt["model"].get("input_size")
    bundle = dataset_for_checkpoint(ckpt, data, data_dir, size)
    if bundle.num_classes != ckpt["model"]["num_classes"]:
        raise UserError(f"'{path}' has {ckpt['model']['num_classes']} classes but {data} has {bundle.num_classes}")
    cuda = torch.cuda.is_available()
    workers = resolve_workers(None)
    loader = DataLoader(SeededTransform(bundle.val, bundle.val_transform), batch_size=batch_size,
                        num_workers=workers, pin_memory=cuda)
    if cuda:
        net = net.to("cuda", memory_format=torch.channels_last)
    metrics = evaluate(net, loader)
    if not math.isfinite(metrics["loss"]):  # finite logits always give a finite cross-entropy
        raise UserError(f"'{path}' gives non-finite logits on {data} (its weights are finite but overflow): the "
                        "model is broken and its accuracy meaningless; use an earlier checkpoint or train again")
    return {"model": ckpt["model"]["name"], "data": data, **metrics}

