"""The `imagen-keras-convert` command: an imagen-pytorch unet -> a Keras `.keras` file.

Usage:
```
python -m imagen_keras.convert unet SOURCE OUTPUT.keras [--config FILE] \
    [--unet-index I] [--ema] [--allow-partial]
```

SOURCE is a `Unet.persist_to_file` package (its config is read from it), a plain state
dict (`.pt`, `.safetensors`, `.npz`; needs `--config`) or an `ImagenTrainer.save`
checkpoint (needs `--config` and `--unet-index`; `--ema` takes the EMA weights). The
conversion report is printed; the `.keras` file is written to a temporary file beside
OUTPUT and moved into place, so OUTPUT is never left half-written. Bad input exits with
status 1 and a one-line error, bad arguments with status 2.
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile

import yaml

from imagen_keras.convert.checkpoint_io import (
    is_trainer_checkpoint,
    is_unet_package,
    read_checkpoint,
)
from imagen_keras.convert.unet import unet_from_imagen_pytorch

PROG = "imagen-keras-convert"


def _parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description="Convert imagen-pytorch checkpoints to Keras .keras files."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    unet = commands.add_parser(
        "unet",
        help="convert one imagen-pytorch Unet",
        description="Convert one imagen-pytorch Unet to a Keras .keras file.",
    )
    unet.add_argument(
        "source",
        metavar="SOURCE",
        help="Unet.persist_to_file package, unet state dict (.pt, .safetensors, .npz) or "
        "ImagenTrainer checkpoint",
    )
    unet.add_argument("output", metavar="OUTPUT", help="the .keras file to write")
    unet.add_argument(
        "--config",
        metavar="FILE",
        help="JSON or YAML file of the imagen-pytorch Unet's keyword arguments; required "
        "unless SOURCE is a persist_to_file package",
    )
    unet.add_argument(
        "--unet-index",
        type=int,
        metavar="I",
        help="which unet of an ImagenTrainer checkpoint (0-based)",
    )
    unet.add_argument("--ema", action="store_true", help="take a trainer checkpoint's EMA weights")
    unet.add_argument(
        "--allow-partial",
        action="store_true",
        help="save even if some tensors are missing, unused or misshapen (they are reported)",
    )
    return parser


def _read_config(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No config file at {path!r}.")
    with open(path) as f:
        try:
            config = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"Cannot parse --config {path!r}: {e}") from e
    if not isinstance(config, dict):
        raise ValueError(
            f"--config {path!r} must hold a mapping of imagen-pytorch Unet arguments. "
            f"Received: {type(config).__name__}"
        )
    return config


def _read_source(path):
    try:
        return read_checkpoint(path)
    except (OSError, ImportError):
        raise
    except Exception as e:  # torch.load, safetensors or numpy refusing the file
        raise ValueError(f"Cannot read {path!r} as a checkpoint: {e}") from e


def _describe_source(checkpoint, args):
    """What SOURCE holds; raises for flags that do not fit it."""
    if is_trainer_checkpoint(checkpoint):
        if args.unet_index is None:
            raise ValueError(
                "SOURCE is an ImagenTrainer checkpoint: pass --unet-index to pick a unet "
                "(and --config with its arguments)."
            )
        if args.config is None:
            raise ValueError(
                "SOURCE is an ImagenTrainer checkpoint, which does not record its unets' "
                f"arguments: pass --config with the imagen-pytorch Unet arguments of unet "
                f"{args.unet_index}."
            )
        weights = "EMA" if args.ema else "online"
        return f"unet {args.unet_index} ({weights} weights) of an ImagenTrainer checkpoint"
    if args.unet_index is not None or args.ema:
        raise ValueError(
            "--unet-index and --ema apply to ImagenTrainer checkpoints only; SOURCE holds "
            "a single unet."
        )
    if is_unet_package(checkpoint):
        return "a Unet.persist_to_file package" + ("" if args.config else " and its config")
    if args.config is None:
        raise ValueError(
            "SOURCE is a plain state dict, which does not record the unet's arguments: pass "
            "--config with the imagen-pytorch Unet arguments it was created with."
        )
    return "a unet state dict"


def _refusal(report):
    problems = report.missing + report.unexpected + [k for k, _, _ in report.shape_mismatches]
    shown = ", ".join(problems[:5]) + (", ..." if len(problems) > 5 else "")
    return (
        f"SOURCE does not match the config ({len(report.missing)} missing, "
        f"{len(report.unexpected)} unexpected, {len(report.shape_mismatches)} misshapen: "
        f"{shown}); nothing was written. Pass --allow-partial to save it anyway."
    )


def _save_atomically(model, path):
    """`model.save(path)` through a temporary file in the same directory."""
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp.keras", dir=directory)
    os.close(fd)
    try:
        model.save(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> what a plain open() would give
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _convert_unet(args):
    if not args.output.endswith(".keras"):
        raise ValueError(f"OUTPUT must end in .keras. Received: {args.output!r}")
    directory = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No directory {directory!r} to write OUTPUT into.")
    config = _read_config(args.config) if args.config else None
    checkpoint = _read_source(args.source)
    what = _describe_source(checkpoint, args)
    print(f"Reading {what} from {args.source}" + (f", config from {args.config}" if config else ""))

    # Always load what fits, so the report is printed before a refusal.
    unet, report = unet_from_imagen_pytorch(
        checkpoint,
        config,
        unet_index=args.unet_index,
        use_ema=args.ema,
        allow_partial=True,
        return_report=True,
    )
    print(report.summary())
    if not report.complete:
        if not args.allow_partial:
            raise ValueError(_refusal(report))
        untouched = len(report.missing) + len(report.shape_mismatches)
        print(f"Partial conversion: {untouched} Keras variables keep their initial values.")
    _save_atomically(unet, args.output)
    print(f"Saved the Keras Unet ({unet.count_params():,} parameters) to {args.output}")


def main(argv=None):
    """Run the command with `argv` (defaults to `sys.argv[1:]`); returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        _convert_unet(args)
    except (OSError, ImportError, ValueError) as e:
        message = " ".join(str(e).split())  # one line, whatever the exception held
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
