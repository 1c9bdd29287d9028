"""Evaluate a saved checkpoint: rebuild its model, load its weights, score the validation split."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..data import SeededTransform, load_dataset
from ..errors import UserError
from ..models import build_model
from .checkpoint import load_checkpoint, load_model_weights
from .evaluate import evaluate
from .option_rules import check_option


def model_from_checkpoint(path: str, model: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The plain model stored in an sddcompress checkpoint, in eval mode, and the checkpoint."""
    ckpt = load_checkpoint(path)
    record = ckpt["model"]
    name = model or record.get("name")
    if name is None or record.get("num_classes") is None:
        raise UserError(f"'{path}' is a bare state_dict; pass --model and use a checkpoint from train/distill")
    net = build_model(name, record["num_classes"], record.get("input_size") or 32)
    load_model_weights(net, ckpt, name, record["num_classes"], path)
    return net.eval(), ckpt


def evaluate_checkpoint(path: str, model: str | None, data: str | None, data_dir: str | None,
                        input_size: int | None, batch_size: int) -> dict:
    if batch_size <= 0:
        raise UserError(f"--batch-size must be > 0, got {batch_size}")
    check_option("input_size", input_size)
    net, ckpt = model_from_checkpoint(path, model)
    data = data or ckpt.get("data")
    if data is None:
        raise UserError("pass --data: the checkpoint does not say which dataset it was trained on")
    size = input_size or ckpt["model"].get("input_size")
    bundle = load_dataset(data, data_dir, size)
    if bundle.num_classes != ckpt["model"]["num_classes"]:
        raise UserError(f"'{path}' has {ckpt['model']['num_classes']} classes but {data} has {bundle.num_classes}")
    loader = DataLoader(SeededTransform(bundle.val, bundle.val_transform), batch_size=batch_size)
    metrics = evaluate(net, loader)
    return {"model": ckpt["model"]["name"], "data": data, **metrics}

