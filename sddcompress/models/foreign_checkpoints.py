"""Weights from files sddcompress did not write, read without running code from them.

Accepted: plain state_dicts (`.pt`, `.pth`, `.bin`, `.safetensors`), also nested under a
`model` / `state_dict` / `net` key and with DataParallel's `module.` prefixes; and the public
CIFAR teacher zoo (mdistiller, CRD, SDD: `{"model": state_dict, "epoch": ..., "best_acc": ...}`)
whose parameter names differ from ours. `ZOO_RENAMES` maps the zoo's names onto our models, which
compute the same function, so a zoo teacher gives the logits of the original model.

Pickles are read with `torch.load(weights_only=True)`: a file that needs code to unpickle is
refused, never executed.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import UserError
from .vgg import STAGES as VGG_STAGES

STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net", "state", "weights")
FACT_KEYS = ("epoch", "best_acc", "best_acc1", "acc", "arch")


def read_weights_file(path: str | Path) -> Any:
    """The object stored in `path` (safetensors, or a pickle loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"checkpoint '{path}' is not a readable .safetensors file ({_first_line(exc)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"(?:Unsupported global:?|GLOBAL)\s+([\w.]+)", text)
        if found:  # the file names a Python callable to run: never unpickled
            raise UserError(f"checkpoint '{path}' refused: it holds objects other than tensors, which are never "
                            f"unpickled (unpickling it would run code: {found.group(0).strip()}). Re-save it as a state_dict (torch.save(model.state_dict(), "
                            "...)) or .safetensors") from None
        raise UserError(f"checkpoint '{path}' is corrupt or not a checkpoint ({_first_line(exc)})") from None
    except Exception as exc:  # the unpickler raises IndexError/KeyError/... on files that are not checkpoints
        raise UserError(f"checkpoint '{path}' is corrupt or not a checkpoint ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def find_state_dict(obj: Any, path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(the tensor dict inside a loaded file, with `module.` prefixes removed; its scalar facts such as
    epoch and best_acc)."""
    facts: dict[str, Any] = {}
    state = obj if _is_tensor_dict(obj) else None
    where = ""
    if state is None and isinstance(obj, dict):
        facts = {k: _plain(obj[k]) for k in FACT_KEYS if k in obj}
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if _is_tensor_dict(inner):
                state, where = inner, key
                break
            if isinstance(inner, dict):  # one more level, e.g. {"model": {"state_dict": ...}}
                nested = next((inner[k] for k in STATE_DICT_KEYS if _is_tensor_dict(inner.get(k))), None)
                if nested is not None:
                    state, where = nested, key
                    break
    if state is None:
        keys = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"checkpoint '{path}' is not an sddcompress checkpoint or a state dict (a dict of tensors, "
                        "under "
                        f"{'/'.join(STATE_DICT_KEYS[:4])}); found: {keys}")
    state = {str(k): v for k, v in state.items()}
    while all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    facts["state_dict_key"] = where
    return state, facts


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value if isinstance(value, (int, float, str)) else str(value)[:40]


# --- the teacher zoo's parameter names -> ours -------------------------------------------------

def _cifar_resnet(key: str) -> str:
    return key.replace(".downsample.", ".shortcut.")


def _wrn(key: str) -> str:
    key = re.sub(r"^(block\d)\.layer\.", r"\1.", key).replace(".convShortcut.", ".shortcut.")
    return re.sub(r"^bn1\.", "bn.", key)


def _vgg(name: str) -> Callable[[str], str]:
    """The zoo keeps one Sequential per stage (conv, bn, relu ...) and separate pools; ours is one
    `features` Sequential with a max-pool after each of the first three stages."""
    table: dict[str, str] = {}
    index = 0
    for s, stage in enumerate(VGG_STAGES[name]):
        for k in range(len(stage)):
            table[f"block{s}.{3 * k}."] = f"features.{index}."
            table[f"block{s}.{3 * k + 1}."] = f"features.{index + 1}."
            index += 3
        index += 1 if s < 3 else 0

    def rename(key: str) -> str:
        head, _, tail = key.rpartition(".")
        mapped = table.get(head + ".")
        return mapped + tail if mapped else key

    return rename


def _cifar_resnet50(key: str) -> str:
    """The zoo's CIFAR ResNet50 is torchvision's Bottleneck net with a 3x3 stem and no max-pool
    (our `resnet50` at <= 64 px) under other names."""
    return re.sub(r"^linear\.", "fc.", key.replace(".shortcut.", ".downsample."))


def _same(key: str) -> str:
    return key


ZOO_RENAMES: dict[str, Callable[[str], str]] = {
    **{n: _cifar_resnet for n in ("resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4", "resnet32x4")},
    **{n: _wrn for n in ("wrn_16_2", "wrn_40_1", "wrn_40_2")},
    **{n: _vgg(n) for n in ("vgg8", "vgg11", "vgg13")},
    "resnet50": _cifar_resnet50,
    **{n: _same for n in ("mobile_half", "shufflev1_paper", "shufflev2_paper")},
}


def head_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the classifier: the last Linear layer."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return []
    prefix = linears[-1]
    return [k for k in model.state_dict() if k.rpartition(".")[0] == prefix]


def _problems(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """Every way `state` does not fit `own`, in the model's order (missing/wrong shape), then extras."""
    found = []
    for key, ref in own.items():
        if key not in state:
            if not key.endswith("num_batches_tracked"):  # older files lack these counters
                found.append(f"missing tensor '{key}'")
        elif tuple(state[key].shape) != tuple(ref.shape):
            found.append(f"tensor '{key}' is {tuple(state[key].shape)} in the file but {tuple(ref.shape)} in the model")
    found += [f"unexpected tensor '{k}'" for k in state if k not in own]
    return found


def infer_num_classes(model: nn.Module, name: str, state: dict[str, torch.Tensor]) -> int | None:
    """The class count a state dict's classifier has, read through our names or the zoo's."""
    keys = [k for k in head_keys(model) if k.endswith("weight")]
    if not keys:
        return None
    for candidate in _layouts(name, state).values():
        if keys[0] in candidate and candidate[keys[0]].dim() >= 1:
            return int(candidate[keys[0]].shape[0])
    return None


def _layouts(name: str, state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    layouts = {"state_dict": state}
    rename = ZOO_RENAMES.get(name)
    if rename is not None and rename is not _same:
        layouts["teacher-zoo"] = {rename(k): v for k, v in state.items()}
    return layouts


def fit_state_dict(model: nn.Module, name: str, num_classes: int, state: dict[str, torch.Tensor],
                   path: str | Path, class_fix: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """`state` under our names for `model` and the layout it was in ("state_dict" or "teacher-zoo");
    anything that does not fit is a one-line UserError naming the first offending tensor. `class_fix` is the
    fix a wrong class count names (default: --num-classes, for the commands that have it)."""
    own = model.state_dict()
    best: tuple[str, list[str]] | None = None
    for layout, candidate in _layouts(name, state).items():
        problems = _problems(own, candidate)
        if not problems:
            for key, ref in own.items():  # fill counters older files lack
                candidate.setdefault(key, ref)
            bad = next((k for k, v in candidate.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
            if bad is not None:
                raise UserError(f"checkpoint '{path}' holds non-finite values in '{bad}'; it cannot be used")
            return {k: candidate[k] for k in own}, layout
        if best is None or len(problems) < len(best[1]):
            best = (layout, problems)
    assert best is not None
    layout, problems = best
    heads = set(head_keys(model))
    only_head = all(any(f"'{k}'" in p for k in heads) for p in problems)
    if only_head:
        saved = infer_num_classes(model, name, state)
        fix = class_fix or f"pass --num-classes {saved} or use a checkpoint for this dataset"
        raise UserError(f"checkpoint '{path}' has {saved} classes, not {num_classes} ({problems[0]}); {fix}")
    raise UserError(f"checkpoint '{path}' does not fit '{name}' ({layout} layout, {len(problems)} problems, first: "
                    f"{problems[0]}); is it another architecture? pass --model NAME (see `sddcompress models`)")
