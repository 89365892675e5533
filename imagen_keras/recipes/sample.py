"""Generate images from a trained cascade: `python -m imagen_keras.recipes.sample`.

```
python -m imagen_keras.recipes.sample --model runs/demo "a red digit seven"
imagen --model runs/demo "a red digit seven" --num-images 4 --seed 7
```

`--model` is a run folder (its newest checkpoint) or a checkpoint file. Each prompt is
saved as `<output>/<prompt_as_file_name>.png` (with `--num-images N > 1`:
`..._0.png` to `..._{N-1}.png`). Image `i` uses seed `seed + i`, so it is the same
whatever `--num-images` is. Runs on CPU when there is no GPU.
"""

import argparse
import os
import sys
import time

from imagen_keras.recipes import runs
from imagen_keras.saving import atomic_write


def add_sample_arguments(parser):
    parser.add_argument("prompts", nargs="*", help="text prompts (one image file per prompt)")
    parser.add_argument("--model", required=True, help="run folder or checkpoint file")
    parser.add_argument("--cond-scale", type=float, default=3.0, help="guidance scale (3)")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i (0)")
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt (1)")
    parser.add_argument("--output", default=".", help="folder for the PNG files (.)")
    parser.add_argument(
        "--unet",
        type=int,
        default=None,
        help="last stage to run (default: the last trained one)",
    )
    parser.add_argument("--sampler", default=None, help="ancestral or ddim (Imagen)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (with --sampler ddim)")
    parser.add_argument("--no-ema", action="store_true", help="use the online weights, not EMA")


def fail(message):
    """Print `message` as the command's one error line; returns the exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def last_trained_stage(checkpoint):
    from imagen_keras.training.checkpoint import checkpoint_metadata

    steps = checkpoint_metadata(checkpoint).get("num_steps_taken") or []
    trained = [i + 1 for i, s in enumerate(steps) if s]
    return trained[-1] if trained else None


def generate(args):
    """Sample `args.prompts` (see `add_sample_arguments`); returns the files written."""
    if args.num_images < 1:
        raise ValueError(f"--num-images must be at least 1. Received: {args.num_images}")
    cascade, checkpoint = runs.load_trained_cascade(args.model, use_ema=not args.no_ema)
    prompts = list(args.prompts)
    if cascade.condition_on_text and not prompts:
        raise ValueError("Give at least one prompt: this model is text-conditioned.")
    if not cascade.condition_on_text and prompts:
        raise ValueError(f"This model is unconditional: it takes no prompt. Received: {prompts!r}")
    stop = args.unet or last_trained_stage(checkpoint) or cascade.num_unets
    options = {}
    if args.sampler is not None:
        options["sampler"] = args.sampler
    if args.steps is not None:
        options["ddim_steps"] = args.steps
    os.makedirs(args.output, exist_ok=True)
    written = []
    for prompt in prompts or [None]:
        start = time.monotonic()
        images = cascade.sample(
            texts=None if prompt is None else [prompt] * args.num_images,
            batch_size=args.num_images,
            cond_scale=args.cond_scale if prompt is not None else 1.0,
            seed=args.seed,
            stop_at_unet_number=stop,
            return_pil_images=True,
            **options,
        )
        stem = "unconditional" if prompt is None else runs.prompt_file_name(prompt)
        for i, image in enumerate(images):
            name = f"{stem}.png" if args.num_images == 1 else f"{stem}_{i}.png"
            path = os.path.join(args.output, name)
            with atomic_write(path, "wb") as f:
                image.save(f, format="PNG")
            written.append(path)
        took = time.monotonic() - start
        files = ", ".join(written[-len(images) :])
        print(f"{len(images)} image(s) of {prompt!r} in {took:.1f}s: {files}")
    return written


def sample_from_args(args):
    from imagen_keras.backend import enable_compilation_cache, set_cpu_xla_flags

    set_cpu_xla_flags()
    enable_compilation_cache()
    try:
        generate(args)
    except (ValueError, FileNotFoundError) as err:
        return fail(" ".join(str(err).split()))
    return 0


def build_parser(prog="python -m imagen_keras.recipes.sample"):
    parser = argparse.ArgumentParser(
        prog=prog, description="Generate images from a trained cascade."
    )
    add_sample_arguments(parser)
    return parser


def main(argv=None):
    return sample_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
