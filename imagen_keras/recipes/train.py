"""Train a cascade stage from a YAML recipe: `python -m imagen_keras.recipes.train`.

```
python -m imagen_keras.recipes.train --config demo.yaml
python -m imagen_keras.recipes.train --config base.yaml --unet 1 train.steps=20000
```

`--config` is a file, or the name of a shipped recipe (`demo`, `base`, `sr256`,
`elucidated`, `unconditional`). The run folder (`output_dir`, default `runs/<recipe>`)
receives checkpoints, sample grids and the config (see `imagen_keras.recipes.runs`).
Running the same command again resumes from the newest checkpoint there, up to
`train.steps` updates of the stage. Ctrl-C (or SIGTERM) saves a checkpoint and exits.
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback

from imagen_keras.recipes import runs
from imagen_keras.recipes.config import ConfigError, RecipeConfig, load_recipe


def _duration(seconds):
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def training_dataset(recipe, image_size):
    """The recipe's data as unbatched `{"images"[, "texts"]}` examples."""
    from imagen_keras.data import demo_dataset, image_folder_dataset, tfds_dataset

    data = dict(recipe.data)
    source = data.pop("source")
    if source == "demo":
        dataset = demo_dataset(image_size, shuffle=False, **data)
    elif source == "folder":
        folder = data.pop("folder")
        dataset = image_folder_dataset(folder, image_size, shuffle=False, **data)
    else:
        name = data.pop("name")
        dataset = tfds_dataset(name, image_size, shuffle=False, **data)
    keys = ("images", "texts") if recipe.condition_on_text else ("images",)
    missing = [k for k in keys if k not in dataset.element_spec]
    if missing:
        raise ConfigError(
            f"`data` gives no {missing[0]!r}: a text-conditioned model needs captions "
            "(`data.captions` for folders, `data.caption_key` for TFDS), or set "
            "`model.condition_on_text: false`."
        )
    return dataset.map(lambda e: {k: e[k] for k in keys})


def dataset_captions(dataset, limit=100_000):
    """The distinct captions of the first `limit` examples, in order."""
    seen = {}
    for example in dataset.take(limit).as_numpy_iterator():
        seen.setdefault(example["texts"].decode("utf-8"), None)
    return list(seen)


def sample_prompts(recipe, dataset):
    """The prompts of the sample grids (`None` for an unconditional cascade)."""
    from imagen_keras.data import DEMO_COLOURS, demo_prompts

    if not recipe.condition_on_text:
        return None
    prompts = recipe.sample["prompts"]
    if prompts == "demo":
        return demo_prompts(recipe.data.get("colours", DEMO_COLOURS))
    if prompts is None:
        return dataset_captions(dataset, limit=2000)[:8]
    return list(prompts)


def prepare_text_encoder(recipe, output_dir, dataset, prompts):
    """Model arguments for the text side: a tiny T5 built in the run folder (once) when
    the recipe asks for one."""
    if recipe.text_encoder is None or not recipe.condition_on_text:
        return {}
    from imagen_keras.text.tiny_t5 import build_tiny_t5_preset

    tiny = dict(recipe.text_encoder["tiny"])
    folder = os.path.abspath(os.path.join(output_dir, runs.TEXT_ENCODER_FOLDER))
    if not os.path.isdir(folder):
        captions = dataset_captions(dataset) + list(prompts or [])
        print(f"Building the tiny text encoder from {len(captions)} captions in {folder}")
        build_tiny_t5_preset(captions, folder, **tiny)
    return {"text_encoder_name": folder, "text_embed_dim": tiny["hidden_dim"]}


def write_config(recipe, output_dir):
    import yaml

    from imagen_keras.saving import atomic_write

    with atomic_write(os.path.join(output_dir, runs.CONFIG_FILE), "w") as f:
        yaml.safe_dump(recipe.to_dict(), f, sort_keys=False)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(recipe, unet=None, output_dir=None, verbose=True):
    """Train the recipe's stage; returns a dict of what was written.

    Args:
        recipe: `RecipeConfig`.
        unet: int or `None`: the stage (default `train.unet`).
        output_dir: str or `None`: the run folder (default the recipe's `output_dir`).
        verbose: bool. Progress lines and the summary.

    Returns:
        dict with `"output_dir"`, `"resumed_from"` (the stage's steps at the start),
        `"checkpoint"`, `"grid"`, `"steps"` (of the stage at the end), `"interrupted"`
        (bool) and `"seconds"`.
    """
    import keras

    from imagen_keras.distribution import distribution_scope, is_chief

    start = time.monotonic()
    train = recipe.train
    unet = train["unet"] if unet is None else unet
    if (
        isinstance(unet, bool)
        or not isinstance(unet, int)
        or not 1 <= unet <= recipe.model.num_unets
    ):
        raise ConfigError(
            f"`--unet` must be a stage number from 1 to {recipe.model.num_unets}. "
            f"Received: {unet!r}"
        )
    # First: a multi-worker strategy must exist before the program's first TF op.
    scope = distribution_scope(train["distribution"], train["devices"], train["model_parallel"])
    chief = is_chief()  # the one process that writes to the run folder
    output_dir = output_dir or recipe.output_dir
    os.makedirs(output_dir, exist_ok=True)
    if chief:
        write_config(recipe, output_dir)
    keras.utils.set_random_seed(train["seed"])

    dataset = training_dataset(recipe, recipe.model.image_sizes[unet - 1])
    prompts = sample_prompts(recipe, dataset)
    # Other processes build the same (seeded) tiny text encoder in a folder of their own.
    text_folder = output_dir if chief else tempfile.mkdtemp(prefix="imagen_worker_")
    overrides = prepare_text_encoder(recipe, text_folder, dataset, prompts)
    if verbose and scope.strategy is not None:
        print(f"Distribution: {scope.name} over {scope.num_replicas} replicas")
    try:
        with scope:
            return _train_in_scope(
                recipe, unet, output_dir, dataset, prompts, overrides, verbose, start
            )
    finally:
        if not chief:
            shutil.rmtree(text_folder, ignore_errors=True)


def _train_in_scope(recipe, unet, output_dir, dataset, prompts, overrides, verbose, start):
    """The part of `run` that builds, trains and samples: inside the distribution scope."""
    import keras

    from imagen_keras.backend import sync_training_state
    from imagen_keras.distribution import is_chief
    from imagen_keras.training import ImagenTrainer, ProgressLogger, SampleGrid
    from imagen_keras.training.callbacks import CheckpointCallback

    train = recipe.train
    cascade = recipe.model.create(seed=train["seed"], **overrides)

    checkpoints = os.path.join(output_dir, runs.CHECKPOINT_FOLDER)
    trainer = ImagenTrainer(
        cascade,
        lr=train["lr"],
        eps=train["eps"],
        beta1=train["beta1"],
        beta2=train["beta2"],
        max_grad_norm=train["max_grad_norm"],
        warmup_steps=train["warmup_steps"],
        cosine_decay_max_steps=train["cosine_decay_max_steps"],
        use_ema=train["use_ema"],
        ema_beta=train["ema_beta"],
        ema_update_after_step=train["ema_update_after_step"],
        ema_update_every=train["ema_update_every"],
        checkpoint_path=checkpoints,
        max_checkpoints_keep=train["keep_checkpoints"],
        max_batch_size=train["max_batch_size"],
        jit_compile=train["jit_compile"],
        precision=train["precision"],
        split_random_seed=train["seed"],
        verbose=verbose,
    )
    trainer.add_train_dataset(dataset, batch_size=train["batch_size"])
    done = trainer.num_steps_taken(unet)
    remaining = train["steps"] - done
    extra = {"recipe": recipe.to_dict(), "unet": unet}
    manager = trainer.checkpoint_manager
    sample = recipe.sample
    sample_kwargs = {k: sample[k] for k in ("sampler", "ddim_steps") if sample[k] is not None}
    grid = SampleGrid(
        prompts,
        train["sample_every"] or train["steps"],
        os.path.join(output_dir, runs.SAMPLES_FOLDER),
        num_images=None if prompts is not None else 8,
        seed=sample["seed"],
        cond_scale=sample["cond_scale"] if prompts is not None else 1.0,
        use_ema=train["use_ema"],
        stop_at_unet_number=unet,
        columns=sample["columns"],
        cell_size=sample["cell_size"],
        **sample_kwargs,
    )
    callbacks = [CheckpointCallback(manager, train["checkpoint_every"], extra=extra)]
    if train["sample_every"]:
        callbacks.append(grid)
    if is_chief():  # logs: one writer
        callbacks.append(
            keras.callbacks.CSVLogger(os.path.join(output_dir, "log.csv"), append=True)
        )
        if train["tensorboard"]:
            log_dir = os.path.join(output_dir, runs.TENSORBOARD_FOLDER)
            callbacks.append(keras.callbacks.TensorBoard(log_dir, update_freq="epoch"))
    interactive = verbose and sys.stdout.isatty()
    if verbose and not interactive and remaining > 0:
        callbacks.append(ProgressLogger(max(1, min(100, remaining // 20 or 1)), remaining))
    interrupted = False
    if remaining > 0:
        if verbose:
            print(
                f"Training unet {unet} of {recipe.name!r}: steps {done} -> {train['steps']} "
                f"(batch {train['batch_size']}, backend {keras.backend.backend()}), "
                f"run folder {output_dir}"
            )
        try:  # SIGTERM (e.g. a scheduler stopping the job) stops as Ctrl-C does
            previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        except ValueError:  # not the main thread: leave signals alone
            previous = None
        try:
            trainer.train(
                unet_number=unet,
                steps=remaining,
                callbacks=callbacks,
                verbose=1 if interactive else 0,
            )
        except KeyboardInterrupt:
            interrupted = True
            sync_training_state(cascade)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    elif verbose:
        print(f"Unet {unet} already has {done} of {train['steps']} steps: nothing to train.")
    steps = trainer.num_steps_taken(unet)
    saved = manager.checkpoints()
    if saved and saved[-1][0] == sum(trainer.steps):
        checkpoint = saved[-1][1]
    elif is_chief():
        checkpoint = manager.save(cascade, extra=extra)
    else:
        checkpoint = None  # the chief saves it
    result = {
        "output_dir": output_dir,
        "resumed_from": done,
        "checkpoint": checkpoint,
        "grid": None,
        "steps": steps,
        "interrupted": interrupted,
    }
    if not interrupted:
        total = sum(trainer.steps)
        # The callback may have drawn this very step already.
        path = grid.paths[-1] if grid.paths and grid._last == total else None
        path = path or grid.write(cascade, total)
        if path is not None:
            final = os.path.join(output_dir, runs.FINAL_GRID)
            shutil.copyfile(path, final)
            result["grid"] = final
    result["seconds"] = time.monotonic() - start
    if verbose:
        _summary(recipe, unet, result)
    return result


def _summary(recipe, unet, result):
    took = _duration(result["seconds"])
    if result["interrupted"]:
        print(
            f"Interrupted at step {result['steps']} of unet {unet} after {took}. Checkpoint: "
            f"{result['checkpoint']}. Run the same command to continue."
        )
        return
    print(
        f"Done: unet {unet} has {result['steps']}/{recipe.train['steps']} steps ({took}). "
        f"Checkpoint: {result['checkpoint']}. Sample grid: {result['grid']}."
    )
    if recipe.condition_on_text:
        print(f'Generate: imagen --model {result["output_dir"]} "your prompt"')


def build_parser(prog="python -m imagen_keras.recipes.train"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a cascade stage from a YAML recipe (resumes from its run folder).",
    )
    add_train_arguments(parser)
    return parser


def add_train_arguments(parser):
    parser.add_argument(
        "--config",
        required=True,
        help="recipe file, or a shipped recipe's name (demo, base, sr256, elucidated, "
        "unconditional)",
    )
    parser.add_argument(
        "--unet", type=int, default=None, help="stage to train (default: train.unet)"
    )
    parser.add_argument(
        "--output", default=None, help="run folder (default: the recipe's output_dir)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="override single keys, e.g. train.steps=500 model.unets.0.dim=64",
    )


def train_from_args(args):
    """Run `args` (from `add_train_arguments`); returns the process exit code."""
    from imagen_keras.backend import enable_compilation_cache, set_cpu_xla_flags

    set_cpu_xla_flags()
    enable_compilation_cache()
    try:
        recipe = load_recipe(args.config, args.overrides)
        result = run(recipe, unet=args.unet, output_dir=args.output, verbose=not args.quiet)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception:
        from imagen_keras.distribution import is_multi_process

        if not is_multi_process():
            raise
        # A failed TensorFlow multi-worker process otherwise hangs in its teardown (its
        # collective-ops server keeps running): print the error and end at once.
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    return 130 if result["interrupted"] else 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return train_from_args(args)


__all__ = ["RecipeConfig", "main", "run"]


def exit_process(code):
    """End a command-line process with `code`. After Ctrl-C/SIGTERM (130) everything is
    saved; the input pipeline's worker threads, interrupted mid-batch, can abort the
    interpreter's teardown ("terminate called without an active exception", SIGABRT),
    which would hide the exit code from a scheduler: so that exit skips the teardown."""
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_process(main())
