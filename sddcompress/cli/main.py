"""`sddcompress` command line: models, train, distill, eval, runs, export, eval-artifact, benchmark, quickstart."""

from __future__ import annotations

import json
import os
import sys

import click
from sddcompress_export.closed_pipe import pipe_safe

from .. import __version__
from ..errors import UserError
from ..run_paths import QUICKSTART_DIR
from . import options as opt


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sddcompress")
def cli() -> None:
    """Distil a small, fast image classifier from a large one (KD, DKD, SDD), export it to
    ONNX / ONNX Runtime / TensorRT and measure it against the teacher."""


@cli.command("models")
@click.option("--all", "show_all", is_flag=True, help="Also list every torchvision classifier.")
def models_cmd(show_all: bool) -> None:
    """List the model names --model/--teacher/--student accept."""
    from rich.console import Console
    from rich.table import Table

    from ..models import list_models
    from ..models.registry import REGISTRY

    entries = list_models()
    table = Table(title="sddcompress models")
    for col in ("name", "family", "notes"):
        table.add_column(col)
    hidden = 0
    for e in entries:
        if e.name in REGISTRY or show_all:
            table.add_row(e.name, e.family, e.description)
        else:
            hidden += 1
    Console().print(table)
    if hidden:
        click.echo(f"... and {hidden} more torchvision classifiers (--all lists them); timm models as timm/NAME "
                   "when timm is installed.")


def _run_training(ctx: click.Context, command: str, values: dict) -> None:
    from ..engine.config import build_config, read_config_file
    from ..engine.trainer import run

    config_name = values.pop("config", None)
    file_values = read_config_file(config_name) if config_name else {}
    given = {name for name in values if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    if command == "train":  # a distill config may be reused to train its teacher: no teacher here
        values.update(method="ce", teacher=None, teacher_ckpt=None, teacher_pretrained=False)
        given.update({"method", "teacher", "teacher_ckpt", "teacher_pretrained"})
    cfg = build_config(file_values, values, given, config_name)
    echo = pipe_safe(click.echo)  # a closed stdout (`... | head -1`) ends the printing, never the run
    result = run(cfg, echo=echo)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary line, not one per process
        echo(f"best val top-1 {result.best_top1:.2f}; checkpoints: {result.latest} (latest), {result.best} (best)")


@cli.command("train")
@opt.train_options
@click.pass_context
def train_cmd(ctx: click.Context, **values) -> None:
    """Train a model (e.g. a teacher) from scratch with cross-entropy."""
    _run_training(ctx, "train", values)


@cli.command("distill")
@opt.distill_options
@click.pass_context
def distill_cmd(ctx: click.Context, **values) -> None:
    """Distil a student from a trained teacher (default method: SDD-DKD)."""
    _run_training(ctx, "distill", values)


@cli.command("eval")
@click.option("--ckpt", required=True, type=click.Path(),
              help="Checkpoint written by train/distill, or any state dict (.pt/.pth/.safetensors, CIFAR teacher zoo).")
@click.option("--model", default=None,
              help="Model name; must match the checkpoint's; required for a state dict from elsewhere. "
                   "[default: from checkpoint]")
@click.option("--num-classes", type=int, default=None,
              help="Class count of a state dict from elsewhere. [default: read from its classifier]")
@click.option("--data", default=None, help="Dataset. [default: the checkpoint's]")
@click.option("--data-dir", default=None, help="Where the dataset's files are.")
@click.option("--input-size", type=int, default=None,
              help="Input size in px. [default: the checkpoint's; 32 for a CIFAR model's state dict]")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Evaluation batch size.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def eval_cmd(ckpt: str, model: str | None, num_classes: int | None, data: str | None, data_dir: str | None,
             input_size: int | None, batch_size: int, as_json: bool) -> None:
    """Top-1 / top-5 accuracy and loss of a checkpoint on a dataset's validation split."""
    from ..engine.checkpoint_eval import evaluate_checkpoint

    metrics = evaluate_checkpoint(ckpt, model, data, data_dir, input_size, batch_size, num_classes)
    if as_json:
        click.echo(json.dumps(metrics))
    else:
        click.echo(f"{metrics['model']} on {metrics['data']} ({metrics['count']} images): top-1 {metrics['top1']:.2f}  "
                   f"top-5 {metrics['top5']:.2f}  loss {metrics['loss']:.4f}")


@cli.command("quickstart")
@click.option("--out", default=str(QUICKSTART_DIR), show_default=True, help="Where runs and the summary go.")
@click.option("--epochs", type=int, default=None,
              help="Epochs of the SDD-DKD students over every training digit; the CE students take as many "
                   "steps over the labelled digits, the teacher trains twice as long. [default: 8]")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Student seeds; the comparison is reported as mean ± std over them.")
@click.option("--fresh", is_flag=True, help="Start over instead of resuming finished parts.")
def quickstart_cmd(out: str, epochs: int | None, seeds: int, fresh: bool) -> None:
    """Offline demo: a teacher trained on every label of scikit-learn's digits; students that see 10% of
    the labels, trained with CE alone or distilled with SDD-DKD on every digit, over several seeds (mean ±
    std and what the paired seeds show); then the distilled student exported to INT8 and timed against
    the teacher."""
    from ..quickstart import run_quickstart

    run_quickstart(out, epochs, fresh, echo=pipe_safe(click.echo), seeds=seeds)


from .benchmark_command import benchmark_cmd as _benchmark_cmd  # noqa: E402
from .deploy_commands import register as _register_deploy  # noqa: E402
from .runs_command import runs_cmd as _runs_cmd  # noqa: E402

_register_deploy(cli)
cli.add_command(_benchmark_cmd)
cli.add_command(_runs_cmd)


def _one_line(exc: BaseException) -> str:
    """The error's one line, at most MAX_ERROR_CHARS long. A UserError re-raised from a DataLoader worker
    carries the worker's traceback: its last line is the error."""
    from sddcompress_export.errors import error_line

    text = str(exc).strip()
    if "Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = last.split("UserError: ", 1)[-1]
    return error_line(text) if text else type(exc).__name__


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure is one line on stderr: exit 2 for bad input, 3 for a non-finite run,
    1 for a system fault (disk full, permission), 130 when interrupted, 70 for a bug."""
    from sddcompress_export.errors import DeployError, error_line
    from sddcompress_export.file_checks import describe_os_error

    from ..engine.checkpoint import CheckpointWriteError, NonFiniteWeights
    from ..engine.trainer import Interrupted, NonFiniteLoss

    try:
        cli.main(args=argv, prog_name="sddcompress", standalone_mode=False)
    except (NonFiniteLoss, NonFiniteWeights) as exc:
        click.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(3)
    except CheckpointWriteError as exc:  # a system fault, not a bad input
        click.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(1)
    except (UserError, DeployError) as exc:
        click.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(2)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(f"error: {error_line(exc.format_message())}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {error_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except Interrupted as exc:
        click.echo(error_line(str(exc)), err=True)
        sys.exit(130)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        sys.exit(130)
    except OSError as exc:
        click.echo(f"error: {error_line(describe_os_error(exc))}", err=True)
        sys.exit(1)
    except MemoryError:
        click.echo("error: out of memory; lower --batch-size or --input-size", err=True)
        sys.exit(1)
    except Exception as exc:
        if "Caught UserError" in str(exc):  # a UserError raised inside a DataLoader worker
            click.echo(f"error: {_one_line(exc)}", err=True)
            sys.exit(2)
        if os.environ.get("SDDCOMPRESS_DEBUG"):
            raise
        first = error_line(str(exc), 200)
        click.echo(f"error: internal error {type(exc).__name__}: {first} (a bug: re-run with SDDCOMPRESS_DEBUG=1 "
                   "for the traceback and report it)", err=True)
        sys.exit(70)


if __name__ == "__main__":
    main()
