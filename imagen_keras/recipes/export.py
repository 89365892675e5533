"""Export a trained cascade as a TF SavedModel: `python -m imagen_keras.recipes.export`.

```
python -m imagen_keras.recipes.export --model runs/demo --output exported/demo/1
imagen export --model runs/demo --output exported/demo/1
```

`--model` is a run folder (its newest checkpoint) or a checkpoint file; the EMA weights
are exported unless `--no-ema`. The sampler and its step count default to the recipe's
`sample` section stored in the checkpoint (else the model's defaults); the request's
`num_steps` input overrides the step count. The SavedModel's `serving_default` signature
is described in `imagen_keras.export`. TF Serving wants a numbered version folder
(`.../demo/1`).

The TensorFlow and JAX backends write the SavedModel themselves; on the torch backend
(which cannot write SavedModels) the command runs itself again with
`KERAS_BACKEND=tensorflow`: checkpoints do not depend on the backend.
"""

import argparse
import os
import subprocess
import sys
import time

from imagen_keras.recipes import runs
from imagen_keras.recipes.sample import fail, last_trained_stage


def add_export_arguments(parser):
    parser.add_argument("--model", required=True, help="run folder or checkpoint file")
    parser.add_argument("--output", required=True, help="SavedModel folder to write")
    parser.add_argument(
        "--unet", type=int, default=None, help="last stage to run (default: the last trained)"
    )
    parser.add_argument("--sampler", default=None, help="ancestral or ddim (Imagen)")
    parser.add_argument("--steps", type=int, default=None, help="default DDIM steps per stage")
    parser.add_argument("--no-ema", action="store_true", help="export the online weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")


def _sampler_options(args, checkpoint, cascade):
    from imagen_keras.elucidated_imagen import ElucidatedImagen
    from imagen_keras.training.checkpoint import checkpoint_metadata

    if isinstance(cascade, ElucidatedImagen):
        if args.sampler is not None or args.steps is not None:
            raise ValueError(
                "--sampler and --steps are options of Gaussian (Imagen) models; an "
                "ElucidatedImagen samples with Heun over its `num_sample_steps` (the "
                f"request's num_steps input overrides it). Received: --sampler={args.sampler}, "
                f"--steps={args.steps}"
            )
        return {}
    recipe = (checkpoint_metadata(checkpoint).get("extra") or {}).get("recipe") or {}
    sample = recipe.get("sample") or {}
    sampler = args.sampler or sample.get("sampler")
    steps = args.steps if args.steps is not None else sample.get("ddim_steps")
    options = {}
    if sampler is not None:
        options["sampler"] = sampler
    if steps is not None and sampler == "ddim":
        options["ddim_steps"] = steps
    elif args.steps is not None:
        raise ValueError(f"--steps needs --sampler ddim. Received: --steps={args.steps}")
    return options


def export(args):
    """Export `args.model` to `args.output` (see `add_export_arguments`); returns the path."""
    from imagen_keras.export import export_saved_model

    start = time.monotonic()
    cascade, checkpoint = runs.load_trained_cascade(args.model, use_ema=not args.no_ema)
    stop = args.unet or last_trained_stage(checkpoint) or cascade.num_unets
    options = _sampler_options(args, checkpoint, cascade)
    path = export_saved_model(
        cascade,
        args.output,
        stop_at_unet_number=stop,
        sampler_options=options,
        overwrite=args.overwrite,
    )
    took = time.monotonic() - start
    print(
        f"Exported {checkpoint} (unets 1-{stop}, {options or 'default sampler'}) to {path} "
        f"in {took:.1f}s. Inspect: saved_model_cli show --dir {path} --all"
    )
    return path


def export_from_args(args, argv):
    import keras

    if keras.backend.backend() == "torch":
        print("The torch backend cannot write SavedModels: exporting with TensorFlow.")
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        command = [sys.executable, "-m", "imagen_keras.recipes.export", *argv]
        return subprocess.run(command, env=env, check=False).returncode
    try:
        export(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        return fail(" ".join(str(err).split()))
    return 0


def build_parser(prog="python -m imagen_keras.recipes.export"):
    parser = argparse.ArgumentParser(
        prog=prog, description="Export a trained cascade as a TF SavedModel for TF Serving."
    )
    add_export_arguments(parser)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    return export_from_args(build_parser().parse_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
