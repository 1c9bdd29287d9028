"""`python tests/checked_cli.py [--float64] ARGS`: the sddcompress CLI, then a check that the run left
no process group for the interpreter's exit to tear down (gloo's worker threads can abort a process
that exits with a live group), and that no DDP-wrapped model was alive when the run destroyed its group
(freed after it, the model destroys the group with the GIL held, which can hang the process).

With --float64, parameters, buffers and batch-norm statistics are created as float64 (the default
dtype), and each module casts float32 inputs (the data pipeline's images) to float64. Tests comparing
runs that differ only in float summation order use it to take that order out of the comparison."""

import gc
import sys

import torch
import torch.distributed as dist
from torch.nn.modules.module import register_module_forward_pre_hook


def _as_float64(module, args):
    return tuple(a.double() if isinstance(a, torch.Tensor) and a.dtype == torch.float32 else a for a in args)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--float64"]:
        args = args[1:]
        torch.set_default_dtype(torch.float64)
        register_module_forward_pre_hook(_as_float64)
    from accelerate import Accelerator

    from sddcompress.cli.main import main

    end_training = Accelerator.end_training

    def checked_end_training(self):
        gc.collect()
        if any(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects()):
            sys.exit("checked_cli: a DDP-wrapped model was alive when the run destroyed its process group")
        end_training(self)

    Accelerator.end_training = checked_end_training
    main(args)
    if dist.is_available() and dist.is_initialized():
        sys.exit("checked_cli: the run returned with its process group still alive")
