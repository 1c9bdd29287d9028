"""Quantization-aware distillation for `sddcompress export --qat-epochs N`.

After post-training quantisation has decided the Q/DQ model (activation ranges, layers kept in float,
precision plan), the student is fine-tuned *as that model* (`QdqNet`: torch's fake quantisation at exactly
the tensors ONNX Runtime quantises) against its teacher with the SDD-DKD objective, then written back through
the same INT8 stage with the same ranges and float layers (`quantize_with_weights`).

The fine-tuning sees the labels the run saw and no others: every training image's label for a run with
all of them, the same class-stratified subset for a --labelled-fraction run (drawn from its --seed), the
others unlabelled (the objective trains cross-entropy on the labelled ones only). It reads the run's training
images with the run's augmentation; BatchNorm is already folded into the convolutions, so nothing else changes
between training and the deployed model.

A tenth of each class's labelled images is left out of the fine-tuning; the fine-tuned model ships unless it
scores below both the post-training model and fp32 minus --int8-max-drop there (`ships_fine_tuned`).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from sddcompress_export.defaults import DEFAULTS

from ..data.fraction import _labels, take_train_fraction
from ..data.label_scarce import split_labels
from ..errors import UserError
from ..losses import Objective, make_method
from ..models import LocalLogits
from ..models.local_logits import head_on_regions, pool_regions
from .qat_options import QatOptions
from .tensor_data import preprocess

QAT_METHOD = "sdd-dkd"
# the gradient's norm is clipped to this: a student whose local logits are far from the teacher's (one trained
# alone) starts with an SDD-DKD loss in the tens, whose first steps would otherwise throw the weights out
CLIP_NORM = 1.0
RUN_OPTIONS = ("temperature", "alpha", "beta", "gamma", "scales")  # taken from the run when it set them
# the ship rule's images: one in RULE_SHARE of each class's labelled training images, at most RULE_MAX_IMAGES
RULE_SHARE = 10
RULE_MAX_IMAGES = 2000
_RULE_SEED_TAG = 0x5417  # keeps the rule's draw apart from other uses of --seed


def teacher_path(ckpt: dict, given: str | None) -> str:
    """The teacher checkpoint: `given`, else the one the run was distilled from; one line if there is none."""
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    path = given or config.get("teacher_ckpt")
    if not path:
        raise UserError("--qat-epochs distils from a teacher: pass --teacher-ckpt PATH (the checkpoint does not "
                        "name one)")
    if not Path(path).is_file():
        where = "--teacher-ckpt" if given else "the run's teacher checkpoint"
        raise UserError(f"{where} '{path}' is not a file; pass --teacher-ckpt PATH")
    return str(path)


def load_teacher(path: str, num_classes: int, input_size: int, scales: tuple[int, ...]) -> LocalLogits:
    from ..engine.checkpoint_eval import model_from_checkpoint

    model, record = model_from_checkpoint(path)
    if record["model"]["num_classes"] != num_classes:
        raise UserError(f"teacher '{path}' has {record['model']['num_classes']} classes, the student {num_classes}; "
                        "pass the --teacher-ckpt it was distilled from")
    saved = record["model"].get("input_size")
    if saved not in (None, input_size):
        raise UserError(f"teacher '{path}' was trained at {saved} px, the student at {input_size} px; pass a "
                        "teacher for the student's input size")
    for p in model.parameters():
        p.requires_grad_(False)
    return LocalLogits(model.eval(), input_size, scales, "teacher")


def fitting_scales(net, scales: tuple[int, ...], input_size: int, echo: Callable[[str], None]) -> tuple[int, ...]:
    """The SDD scales the student's last feature map can serve (a 1x1 map: the global region only); a
    reduction is said in one line."""
    with torch.no_grad():
        _, feature, _ = net.features_and_head(torch.zeros(1, 3, input_size, input_size))
    side = min(feature.shape[-2:])
    kept = tuple(s for s in scales if s <= side) or (1,)
    if kept != tuple(scales):
        echo(f"QAT: the student's last feature map is {feature.shape[-2]}x{feature.shape[-1]}: SDD scales "
             f"{','.join(map(str, kept))} (of {','.join(map(str, scales))})")
    return kept


def student_local_logits(net, images: torch.Tensor, scales: tuple[int, ...]):
    """(logits, SDD local logits (B, K, N)) of the Q/DQ student: every region through its quantised head."""
    logits, feature, head = net.features_and_head(images)
    return logits, head_on_regions(head, pool_regions(feature, scales))


def labels_the_run_saw(bundle, ckpt: dict):
    """The training images the run trained on (its --train-fraction of each class) with the labels it trained
    on: all of them, or its --labelled-fraction subset (from its --seed), the others unlabelled in a
    distillation run and absent in a run trained alone (which saw the labelled ones only). The images of an
    --unlabelled folder are not among them."""
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    bundle = take_train_fraction(bundle, float(config.get("train_fraction") or 1.0))
    fraction = float(config.get("labelled_fraction") or 1.0)
    method = config.get("method")
    distilled = method is None or make_method(str(method)).uses_teacher
    return split_labels(bundle, fraction, None, int(config.get("seed") or 0), uses_teacher=distilled)[0].train


def ship_rule_indices(labels: np.ndarray, seed: int) -> list[int]:
    """Indices of the images the ship rule scores on and the fine-tuning leaves out: one in RULE_SHARE of each
    class's labelled images (rounded down, so a class with fewer than RULE_SHARE labels keeps them all for
    training), at most RULE_MAX_IMAGES // classes per class, drawn with `seed`."""
    labels = np.asarray(labels)
    classes = np.unique(labels[labels >= 0])
    if not len(classes):
        return []
    per_class = RULE_MAX_IMAGES // len(classes)
    rng = np.random.default_rng([_RULE_SEED_TAG, seed])
    picked = [rng.permutation(members)[:min(len(members) // RULE_SHARE, per_class)]
              for members in (np.flatnonzero(labels == c) for c in classes)]
    return sorted(int(i) for i in np.concatenate(picked))


def ships_fine_tuned(fp32_top1: float, post_training_top1: float, fine_tuned_top1: float, max_drop: float) -> bool:
    """Whether the fine-tuned model ships: it does unless it scores below both the post-training model and fp32
    minus `max_drop` (the drop every INT8 choice may cost) on the images the fine-tuning left out.

    Those are training images: the fp32 student, and the post-training model with it, fitted them, and the
    fine-tuning moves the weights away from that fit. So a fine-tuned model that is better on unseen images can
    score a little lower there; asking it to beat the post-training model would keep the worse one."""
    return fine_tuned_top1 >= min(post_training_top1, fp32_top1 - max_drop)


def distill_qdq(net, images, transform, teacher: LocalLogits, options: QatOptions, method_options: dict,
                seed: int, echo: Callable[[str], None]) -> dict:
    """Fine-tune `net` (a QdqNet) in place on the training `images` (a dataset of (image, label), UNLABELLED
    for an image without one) under `transform`, seeded per (seed, epoch, index) like training; returns a
    summary."""
    from ..data.augment import EpochShuffleSampler, SeededTransform

    method = make_method(QAT_METHOD, **{**method_options, "warmup_epochs": 0.0})
    objective = Objective(method)
    torch.manual_seed(seed)
    dataset = SeededTransform(images, transform, seed)
    batch = min(options.batch_size, len(dataset))
    per_epoch = len(dataset) // batch
    steps = max(1, round(options.epochs * per_epoch))
    sampler = EpochShuffleSampler(len(dataset), seed)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True, num_workers=0)
    optimizer = torch.optim.SGD(list(net.parameters()), lr=options.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    net.train()
    started, losses, epoch = time.perf_counter(), [], 0
    echo(f"QAT: {steps} steps ({options.epochs:g} epochs of {per_epoch}) of {QAT_METHOD} from the teacher, batch "
         f"{batch}, lr {options.lr:g}")
    while len(losses) < steps:
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for x, labels in loader:
            with torch.no_grad():
                t_logits, t_local = teacher(x)
            s_logits, s_local = student_local_logits(net, x, method.scales)
            loss = objective(s_logits, labels, teacher_logits=t_logits, student_local=s_local,
                             teacher_local=t_local, epoch_progress=1.0)["loss"]
            if not torch.isfinite(loss):
                raise UserError("quantization-aware training: the loss is not finite; pass a smaller --qat-lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP_NORM)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if len(losses) >= steps:
                break
        epoch += 1
    bad = [name for name, value in net.float_weights().items() if not np.isfinite(value).all()]
    if bad:
        raise UserError(f"quantization-aware training left non-finite weights in {bad[0]}; pass a smaller --qat-lr")
    tenth = max(1, len(losses) // 10)
    summary = {"steps": len(losses), "seconds": time.perf_counter() - started, "batch_size": batch,
               "lr": options.lr, "epochs": options.epochs, "method": QAT_METHOD,
               "labelled_images": int(np.sum(_labels(images) >= 0)), "loss_first": float(np.mean(losses[:tenth])),
               "loss_last": float(np.mean(losses[-tenth:]))}
    echo(f"QAT: {summary['steps']} steps in {summary['seconds']:.1f}s; loss {summary['loss_first']:.4f} -> "
         f"{summary['loss_last']:.4f} (mean of the first and last tenth)")
    return summary


def quantization_aware_net(fp32_path: Path, int8_path: Path, rewrite):
    """The Q/DQ model at `int8_path` as a trainable `QdqNet`, its float weights from `fp32_path` changed as the
    INT8 stage changed them before calibrating (`rewrite`, the `QuantizationResult`'s `ChannelRewrite`)."""
    import tempfile

    import onnx
    from sddcompress_export.ort_quantization import prepared_model

    from .qdq_net import QdqNet

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        prepared_model(fp32_path, prepared)
        float_model = onnx.load(str(prepared))
        rewrite.apply(float_model)
        return QdqNet(onnx.load(str(int8_path)), float_model)


def qat_int8(ckpt: dict, bundle, fp32_path: Path, int8_path: Path, result, options: QatOptions,
             echo: Callable[[str], None], max_drop: float = DEFAULTS.max_drop,
             fine_tuned_copy: Path | None = None) -> dict:
    """Fine-tune the student as the Q/DQ model at `int8_path` on the training images the run saw, less the ship
    rule's tenth (`ship_rule_indices`), then write the result through the INT8 stage (same activation ranges,
    same float layers) and keep it in `int8_path` if `ships_fine_tuned` on that tenth; otherwise the
    post-training model stays and the summary says so (`shipped`). `fine_tuned_copy`, when given, also receives
    the fine-tuned model, shipped or not (the families benchmark scores both). Returns the fine-tuning's
    summary."""
    from sddcompress_export.ort_quantization import held_out_score, predict_cpu, quantize_with_weights, scoring_batch

    if result.ranges is None:
        raise UserError("quantization-aware training needs ONNX Runtime's calibration cache (onnxruntime 1.24 or "
                        "newer); upgrade onnxruntime or export without --qat-epochs")
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    seed = int(config.get("seed") or 0)
    path = teacher_path(ckpt, options.teacher_ckpt)
    method_options = {k: config.get(k) for k in RUN_OPTIONS if config.get(k) is not None}
    net = quantization_aware_net(fp32_path, int8_path, result.rewrite)
    scales = fitting_scales(net, make_method(QAT_METHOD, **method_options).scales, bundle.input_size, echo)
    method_options["scales"] = scales
    teacher = load_teacher(path, bundle.num_classes, bundle.input_size, scales)
    seen = labels_the_run_saw(bundle, ckpt)
    left_out = ship_rule_indices(_labels(seen), seed)
    leave = set(left_out)
    images = Subset(seen, [i for i in range(len(seen)) if i not in leave]) if leave else seen
    summary = distill_qdq(net, images, bundle.train_transform, teacher, options, method_options, seed, echo)
    summary.update(teacher_ckpt=path, rule_images=len(left_out))
    trained = int8_path.with_name(f".{int8_path.stem}.quantization-aware.onnx")
    try:
        quantize_with_weights(fp32_path, int8_path, net.float_weights(), result.ranges, result.method,
                              result.float_nodes, out_path=trained)
        if fine_tuned_copy is not None:
            shutil.copyfile(trained, fine_tuned_copy)
        if not left_out:
            summary["shipped"] = "quantization-aware"
            echo(f"QAT: no labelled training image was left out to check it on (a class needs {RULE_SHARE} labels, "
                 f"at most {RULE_MAX_IMAGES} are left out in all): the fine-tuned model is shipped unchecked")
        else:
            held, labels = preprocess(seen, bundle.val_transform, left_out)
            batch = scoring_batch(fp32_path)
            fp32 = predict_cpu(str(fp32_path), held, batch)
            before = held_out_score(str(int8_path), held, fp32, labels, batch)
            after = held_out_score(str(trained), held, fp32, labels, batch)
            ships = ships_fine_tuned(before.fp32_top1, before.top1, after.top1, max_drop)
            summary.update(shipped="quantization-aware" if ships else "post-training", rule_fp32_top1=before.fp32_top1,
                           rule_post_training_top1=before.top1, rule_quantization_aware_top1=after.top1)
            said = (f"top-1 {after.top1:.2f} on the {len(held)} labelled training images it left out (post-training "
                    f"{before.top1:.2f}, fp32 {before.fp32_top1:.2f})")
            if not ships:
                echo(f"QAT: {said}: below the post-training model and more than --int8-max-drop {max_drop:g} below "
                     "fp32, so the post-training model is kept (try another --qat-lr or --qat-epochs)")
                return summary
            echo(f"QAT: {said}: the fine-tuned model is shipped")
        os.replace(trained, int8_path)
    finally:
        trained.unlink(missing_ok=True)
    return summary
