"""A run folder: what a recipe writes, and how a trained cascade is found again.

```
runs/demo/
  config.yaml          the recipe as run (overrides applied)
  text_encoder/        the tiny T5 preset, when the recipe builds one
  checkpoints/         checkpoint.{step}.zip (newest kept; resume point)
  samples/             samples.{step}.png grids during training
  samples.png          the grid of the finished run
  log.csv              loss per epoch
```
"""

import os
import re

TEXT_ENCODER_FOLDER = "text_encoder"
CHECKPOINT_FOLDER = "checkpoints"
SAMPLES_FOLDER = "samples"
TENSORBOARD_FOLDER = "tensorboard"
CONFIG_FILE = "config.yaml"
FINAL_GRID = "samples.png"


def find_checkpoint(model):
    """The checkpoint file for `model`: a checkpoint file, a run folder (its newest
    checkpoint) or a run's `checkpoints/` folder.

    Raises:
        FileNotFoundError: naming what was looked for.
    """
    from imagen_keras.training.checkpoint_manager import CheckpointManager

    path = os.fspath(model)
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--model {path!r} is neither a checkpoint file nor a run folder.")
    for folder in (os.path.join(path, CHECKPOINT_FOLDER), path):
        latest = CheckpointManager(folder).latest()
        if latest is not None:
            return latest
    raise FileNotFoundError(
        f"The folder {path!r} holds no checkpoint (checkpoint.N.zip, also looked in "
        f"{os.path.join(path, CHECKPOINT_FOLDER)!r}). Train first, or pass a checkpoint file."
    )


def run_folder_of(checkpoint):
    """The run folder a checkpoint file belongs to (`.../run/checkpoints/x.zip` -> `.../run`)."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    if os.path.basename(folder) == CHECKPOINT_FOLDER:
        folder = os.path.dirname(folder)
    return folder


def load_trained_cascade(model, use_ema=True):
    """The cascade of a checkpoint or run folder, ready to sample.

    The EMA weights are used when the checkpoint has them (`use_ema=False`: the online
    weights). A text encoder recorded as a local folder that no longer exists (a run
    folder that was moved or copied) is looked for in the run's `text_encoder/`.

    Returns:
        `(cascade, checkpoint_path)`.
    """
    from imagen_keras.text.loader import load_text_encoder
    from imagen_keras.training.checkpoint import load_imagen_from_checkpoint

    checkpoint = find_checkpoint(model)
    cascade = load_imagen_from_checkpoint(checkpoint, load_ema_if_available=use_ema)
    name = cascade.text_encoder_name
    local = os.path.join(run_folder_of(checkpoint), TEXT_ENCODER_FOLDER)
    looks_like_path = isinstance(name, str) and (os.sep in name or name.startswith("."))
    if cascade.condition_on_text and looks_like_path and not os.path.isdir(name):
        if os.path.isdir(local):
            cascade.set_text_encoder(load_text_encoder(local))
    return cascade, checkpoint


def prompt_file_name(prompt, max_length=80):
    """A safe file stem for a prompt: `"A squirrel, raiding!"` -> `"a_squirrel_raiding"`."""
    stem = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:max_length].strip("_")
    return stem or "image"
