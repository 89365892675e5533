"""The `imagen-keras-convert` command: imagen-pytorch models -> Keras `.keras` files.

Usage:
```
python -m imagen_keras.convert unet SOURCE OUTPUT.keras [--config FILE] \
    [--unet-index I] [--ema] [--allow-partial]
python -m imagen_keras.convert imagen SOURCE OUTPUT.keras [--config FILE] \
    [--imagen-type {original,elucidated}] [--ema] [--allow-partial]
```

`unet`: SOURCE is a `Unet.persist_to_file` package (its config is read from it), a plain
state dict (`.pt`, `.safetensors`, `.npz`; needs `--config`) or an `ImagenTrainer.save`
checkpoint (needs `--config` and `--unet-index`; `--ema` takes the EMA weights).

`imagen`: SOURCE is an `ImagenTrainer.save` checkpoint (or its flat `.npz` /
`.safetensors` form); the whole cascade (`Imagen` or `ElucidatedImagen`) is rebuilt from
the checkpoint's `imagen_params`, or from `--config` when it has none.

The conversion report is printed; the `.keras` file is written to a temporary file beside
OUTPUT and moved into place, so OUTPUT is never left half-written. Bad input exits with
status 1 and a one-line error, bad arguments with status 2.
"""

import argparse
import json
import os
import sys

import yaml

from imagen_keras.convert.checkpoint_io import (
    NotACheckpointError,
    is_trainer_checkpoint,
    is_unet_package,
    read_checkpoint,
)
from imagen_keras.convert.imagen import IMAGEN_TYPES, imagen_from_imagen_pytorch
from imagen_keras.convert.unet import unet_from_imagen_pytorch
from imagen_keras.saving import save_model

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
    cascade = commands.add_parser(
        "imagen",
        help="convert a whole imagen-pytorch cascade (Imagen or ElucidatedImagen)",
        description="Convert an imagen-pytorch ImagenTrainer checkpoint (the whole cascade) "
        "to a Keras .keras file.",
    )
    cascade.add_argument(
        "source",
        metavar="SOURCE",
        help="ImagenTrainer.save checkpoint (.pt), or its flat .npz / .safetensors form",
    )
    cascade.add_argument("output", metavar="OUTPUT", help="the .keras file to write")
    cascade.add_argument(
        "--config",
        metavar="FILE",
        help="JSON or YAML file of the ImagenConfig / ElucidatedImagenConfig fields (unets "
        "as a list of UnetConfig dicts, image_sizes, ...); required when the checkpoint "
        "has no imagen_params, and replaces them otherwise",
    )
    cascade.add_argument(
        "--imagen-type",
        choices=IMAGEN_TYPES,
        help="original (Imagen) or elucidated (ElucidatedImagen); defaults to the "
        "checkpoint's, else original",
    )
    cascade.add_argument("--ema", action="store_true", help="take the EMA weights")
    cascade.add_argument(
        "--allow-partial",
        action="store_true",
        help="save even if some tensors are missing, unused or misshapen (they are reported)",
    )
    return parser


def _read_config(path, what="imagen-pytorch Unet arguments"):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No config file at {path!r}.")
    with open(path) as f:
        try:
            config = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"Cannot parse --config {path!r}: {e}") from e
    if not isinstance(config, dict):
        raise ValueError(
            f"--config {path!r} must hold a mapping of {what}. Received: {type(config).__name__}"
        )
    return config


def _read_source(path):
    try:
        return read_checkpoint(path)
    except (OSError, ImportError, NotACheckpointError):
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
    return _refusal_of(report.missing, report.unexpected, report.shape_mismatches)


def _refusal_of(missing, unexpected, shape_mismatches):
    problems = missing + unexpected + [k for k, _, _ in shape_mismatches]
    shown = ", ".join(problems[:5]) + (", ..." if len(problems) > 5 else "")
    return (
        f"SOURCE does not match the config ({len(missing)} missing, "
        f"{len(unexpected)} unexpected, {len(shape_mismatches)} misshapen: "
        f"{shown}); nothing was written. Pass --allow-partial to save it anyway."
    )


def _check_output(path):
    if not path.endswith(".keras"):
        raise ValueError(f"OUTPUT must end in .keras. Received: {path!r}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No directory {directory!r} to write OUTPUT into.")


def _save_atomically(model, path):
    """`model.save(path)` through the package's atomic writer: OUTPUT is never half-written."""
    save_model(model, path)


def _convert_unet(args):
    _check_output(args.output)
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


def _convert_imagen(args):
    _check_output(args.output)
    config = None
    if args.config:
        config = _read_config(args.config, "ImagenConfig / ElucidatedImagenConfig fields")
    checkpoint = _read_source(args.source)
    weights = "EMA" if args.ema else "online"
    print(
        f"Reading the cascade ({weights} weights) from {args.source}"
        + (f", config from {args.config}" if config else "")
    )
    imagen, report = imagen_from_imagen_pytorch(
        checkpoint,
        config,
        imagen_type=args.imagen_type,
        use_ema=args.ema,
        allow_partial=True,
        return_report=True,
    )
    print(report.summary())
    if not report.complete:
        missing = [k for r in report.unets for k in r.missing]
        unexpected = [k for r in report.unets for k in r.unexpected] + report.unexpected
        mismatches = [m for r in report.unets for m in r.shape_mismatches]
        if not args.allow_partial:
            raise ValueError(_refusal_of(missing, unexpected, mismatches))
        untouched = len(missing) + len(mismatches)
        print(f"Partial conversion: {untouched} Keras variables keep their initial values.")
    _save_atomically(imagen, args.output)
    kind = type(imagen).__name__
    params = sum(unet.count_params() for unet in imagen.unets)
    print(f"Saved the Keras {kind} ({params:,} unet parameters) to {args.output}")


def main(argv=None):
    """Run the command with `argv` (defaults to `sys.argv[1:]`); returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        (_convert_imagen if args.command == "imagen" else _convert_unet)(args)
    except (OSError, ImportError, ValueError) as e:
        message = " ".join(str(e).split())  # one line, whatever the exception held
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
