"""Callbacks for training a cascade with plain `fit`: sample grids, checkpoints, progress.

TensorBoard logging is Keras' own `keras.callbacks.TensorBoard(log_dir)`; skipped
non-finite steps are reported (and training stopped after too many) by
`NonFiniteStepMonitor`, which the cascades' `fit` adds by itself.

Steps are counted as optimizer updates summed over the unets
(`cascade.stage_optimizers.steps()`, imagen-pytorch's total `steps`), so the numbers
continue across restarts from a checkpoint and a micro-batch of gradient accumulation
is not a step.
"""

import math
import os
import textwrap
import time

import keras
import numpy as np

from imagen_keras.distribution import is_chief
from imagen_keras.saving import _gfile, _is_remote, atomic_write


def _check_every(value, name="every_n_steps"):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")


def total_steps(cascade):
    """Optimizer updates of all unets of `cascade` together."""
    return sum(cascade.stage_optimizers.steps())


class _EveryNSteps(keras.callbacks.Callback):
    """Calls `self.run(step)` when the total update count reaches a multiple of N."""

    def __init__(self, every_n_steps):
        super().__init__()
        _check_every(every_n_steps)
        self.every_n_steps = int(every_n_steps)
        self._last = None

    def on_train_batch_end(self, batch, logs=None):
        model = self.model  # on JAX this syncs the training state into the variables
        step = total_steps(model)
        if step > 0 and step % self.every_n_steps == 0 and step != self._last:
            self._last = step
            self.run(model, step)

    def run(self, model, step):
        raise NotImplementedError


def _join(directory, name):
    return (
        f"{directory.rstrip('/')}/{name}"
        if _is_remote(directory)
        else os.path.join(directory, name)
    )


def _makedirs(directory):
    if _is_remote(directory):
        _gfile().makedirs(directory)
    else:
        os.makedirs(directory, exist_ok=True)


def make_grid(images, captions=None, columns=None, cell_size=64):
    """A PIL image showing `images` in a grid, each with its caption below.

    Args:
        images: list of PIL images (or an array `(n, h, w, c)` in [0, 1]).
        captions: list of str or `None`.
        columns: int or `None` (about a square grid).
        cell_size: int, defaults to 64. Smaller images are enlarged to this size
            (nearest neighbour), larger ones are shown as they are.

    Returns:
        A `PIL.Image.Image` (RGB).
    """
    from PIL import Image, ImageDraw, ImageFont

    if not isinstance(images, (list, tuple)):
        array = np.clip(np.asarray(images) * 255.0 + 0.5, 0, 255).astype("uint8")
        if array.shape[-1] == 1:
            array = array[..., 0]
        images = [Image.fromarray(a) for a in array]
    n = len(images)
    if n == 0:
        raise ValueError("`images` is empty: nothing to put in a grid.")
    if captions is not None and len(captions) != n:
        raise ValueError(
            f"`captions` must hold one caption per image ({n}). Received {len(captions)}."
        )
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    width = max(cell_size, max(im.size[0] for im in images))
    height = max(cell_size, max(im.size[1] for im in images))
    font = ImageFont.load_default()
    chars = max(4, width // 6)
    lines = [
        textwrap.wrap(c, chars, max_lines=3, placeholder="...") if captions else []
        for c in (captions or [""] * n)
    ]
    line_height = 12
    text_height = line_height * max((len(x) for x in lines), default=0)
    text_height += 4 if text_height else 0
    grid = Image.new("RGB", (columns * width, rows * (height + text_height)), "white")
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        x, y = (i % columns) * width, (i // columns) * (height + text_height)
        scale = max(1, min(width // image.size[0], height // image.size[1]))
        shown = image.convert("RGB").resize(
            (image.size[0] * scale, image.size[1] * scale), Image.NEAREST
        )
        grid.paste(shown, (x, y))
        for j, line in enumerate(lines[i]):
            draw.text((x + 2, y + height + 2 + j * line_height), line, fill="black", font=font)
    return grid


class SampleGrid(_EveryNSteps):
    """Every N steps, sample fixed prompts with the EMA weights and save a captioned grid.

    The grid is a PNG `directory/samples.{step}.png`, written atomically. Image `i`
    uses seed `seed + i` at every step, so successive grids show the same noise
    turning into pictures as training goes on. The EMA weights are swapped in for the
    sampling only (`sample(use_non_ema=not use_ema)`); training continues on the
    online weights.

    Args:
        prompts: list of str (encoded by the cascade's T5), or `None` with
            `text_embeds` or (unconditional cascades) `num_images`.
        every_n_steps: int, defaults to `1000`. Total optimizer updates between grids.
        directory: str, defaults to `"samples"`. Local folder or URL.
        text_embeds: array `(n, tokens, dim)` or `None`; with `text_masks`.
        text_masks: array `(n, tokens)` or `None`.
        num_images: int or `None`. Images of an unconditional cascade's grid.
        captions: list of str or `None` (the prompts, or `#i` with embeddings).
        seed: int, defaults to `0`.
        cond_scale: float, defaults to `1.0` (no guidance).
        use_ema: bool, defaults to `True`.
        stop_at_unet_number: int or `None`: the last stage to run; defaults to the
            stage being trained (later, untrained stages would only add noise).
        columns: int or `None`. Grid columns.
        cell_size: int, defaults to `64`. Small images are enlarged to this.
        **sample_kwargs: more `sample()` arguments (`sampler="ddim"`, `ddim_steps`, ...).

    Example:
    ```python
    grid = SampleGrid(text_embeds=embeds[:4], captions=["red", "blue", "red", "blue"],
                      every_n_steps=500, directory="samples", cond_scale=3.0)
    imagen.fit(dataset, epochs=10, callbacks=[grid])
    ```
    """

    def __init__(
        self,
        prompts=None,
        every_n_steps=1000,
        directory="samples",
        *,
        text_embeds=None,
        text_masks=None,
        num_images=None,
        captions=None,
        seed=0,
        cond_scale=1.0,
        use_ema=True,
        stop_at_unet_number=None,
        columns=None,
        cell_size=64,
        **sample_kwargs,
    ):
        super().__init__(every_n_steps)
        given = [x is not None for x in (prompts, text_embeds, num_images)]
        if sum(given) != 1:
            raise ValueError(
                "Give exactly one of `prompts` (strings), `text_embeds` and `num_images` "
                f"(unconditional). Received: prompts={prompts!r}, text_embeds of type "
                f"{type(text_embeds).__name__}, num_images={num_images!r}"
            )
        if num_images is not None and (
            isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1
        ):
            raise ValueError(
                f"`num_images` must be a positive int. Received: num_images={num_images!r}"
            )
        if prompts is not None and (
            isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts)
        ):
            raise ValueError(f"`prompts` must be a list of str. Received: prompts={prompts!r}")
        count = num_images or (len(prompts) if prompts is not None else len(text_embeds))
        if captions is None:
            captions = list(prompts) if prompts is not None else [f"#{i}" for i in range(count)]
        if len(captions) != count:
            raise ValueError(
                f"`captions` must hold one caption per image ({count}). "
                f"Received {len(captions)} captions."
            )
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise ValueError(f"`seed` must be an int. Received: seed={seed!r}")
        self.prompts = prompts
        self.text_embeds = text_embeds
        self.text_masks = text_masks
        self.num_images = num_images
        self.captions = list(captions)
        self.directory = os.fspath(directory)
        self.seed = int(seed)
        self.cond_scale = cond_scale
        self.use_ema = use_ema
        self.stop_at_unet_number = stop_at_unet_number
        self.columns = columns
        self.cell_size = cell_size
        self.sample_kwargs = sample_kwargs
        self.paths = []

    def run(self, model, step):
        self.write(model, step)

    def write(self, model, step):
        """Sample with `model` and write the grid for `step`; returns its path (None
        in the processes of a multi-process run other than the chief)."""
        stop = self.stop_at_unet_number or model.unet_number or model.num_unets
        images = model.sample(
            texts=self.prompts,
            text_embeds=self.text_embeds,
            text_masks=self.text_masks,
            **({"batch_size": self.num_images} if self.num_images else {}),
            cond_scale=self.cond_scale,
            seed=self.seed,
            use_non_ema=not self.use_ema,
            stop_at_unet_number=stop,
            return_pil_images=True,
            verbose=False,
            **self.sample_kwargs,
        )
        if not is_chief():  # every process samples (collectives), one writes
            return None
        grid = make_grid(images, self.captions, self.columns, self.cell_size)
        _makedirs(self.directory)
        path = _join(self.directory, f"samples.{step}.png")
        with atomic_write(path, "wb") as f:
            grid.save(f, format="PNG")
        self.paths.append(path)
        return path


class CheckpointCallback(_EveryNSteps):
    """Every N steps, save a checkpoint through a `CheckpointManager`.

    Args:
        manager: a `CheckpointManager`, or a folder (str) to create one in.
        every_n_steps: int, defaults to `1000`. Total optimizer updates between saves.
        extra: JSON-serializable dict or `None`, stored in every checkpoint.

    Example:
    ```python
    manager = CheckpointManager("run/checkpoints", max_to_keep=5)
    manager.restore_latest(imagen)
    imagen.compile(unet_number=1)
    imagen.fit(dataset, epochs=10, callbacks=[CheckpointCallback(manager, 500)])
    ```
    """

    def __init__(self, manager, every_n_steps=1000, extra=None):
        from imagen_keras.training.checkpoint_manager import CheckpointManager

        super().__init__(every_n_steps)
        if isinstance(manager, (str, os.PathLike)):
            manager = CheckpointManager(manager)
        if not isinstance(manager, CheckpointManager):
            raise ValueError(
                f"`manager` must be a CheckpointManager or a folder. Received: {manager!r}"
            )
        self.manager = manager
        self.extra = extra
        self.paths = []

    def run(self, model, step):
        if is_chief():  # one process writes checkpoints
            self.paths.append(self.manager.save(model, step, extra=self.extra))


def _duration(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class ProgressLogger(keras.callbacks.Callback):
    """A log line every N batches: loss, steps per second and time left.

    Keras' progress bar (`fit(verbose=1)`) shows the loss and the time left of the
    current epoch on a terminal; in a log file (`verbose=2`) it writes one line per
    epoch. This callback adds a line every `every_n_steps` batches that reads well in
    a log, with the rate over the last interval and the time left of the whole run.

    Args:
        every_n_steps: int, defaults to `100`. Batches between lines.
        total_steps: int or `None`: batches of the whole run, for the time left;
            defaults to `fit`'s `epochs * steps_per_epoch` when known.
        print_fn: callable, defaults to `print`.

    Example:
    ```python
    imagen.fit(dataset, epochs=100, verbose=0, callbacks=[ProgressLogger(50)])
    # step 50/3000 - loss 0.1234 - 3.41 steps/s - elapsed 0m15s - ETA 14m25s
    ```
    """

    def __init__(self, every_n_steps=100, total_steps=None, print_fn=print):
        super().__init__()
        _check_every(every_n_steps)
        if total_steps is not None:
            _check_every(total_steps, "total_steps")
        self.every_n_steps = int(every_n_steps)
        self.total_steps = total_steps
        self.print_fn = print_fn
        self.lines = []

    def on_train_begin(self, logs=None):
        self._step = 0
        self._start = self._last_time = time.monotonic()
        self._last_step = 0
        total = self.total_steps
        if total is None and self.params.get("steps") and self.params.get("epochs"):
            total = self.params["steps"] * self.params["epochs"]
        self._total = total

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every_n_steps:
            return
        now = time.monotonic()
        rate = (self._step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, self._step
        parts = [f"step {self._step}" + (f"/{self._total}" if self._total else "")]
        for key, value in (logs or {}).items():
            try:
                parts.append(f"{key} {float(value):.4g}")
            except (TypeError, ValueError):
                continue
        parts.append(f"{rate:.3g} steps/s")
        parts.append(f"elapsed {_duration(now - self._start)}")
        if self._total:
            parts.append(f"ETA {_duration(max(self._total - self._step, 0) / rate)}")
        line = " - ".join(parts)
        self.lines.append(line)
        self.print_fn(line)
