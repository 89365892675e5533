"""`ImagenTrainer`: imagen-pytorch's trainer API over Keras' `compile`/`fit`.

Everything real is Keras: each unet's optimizer is an `imagen_optimizer` (Adam with
the reference's defaults, global-norm clipping, warmup + cosine decay, EMA with
ema-pytorch's warm-up, gradient accumulation, non-finite steps skipped) kept in the
cascade's `stage_optimizers`; a training step is `train_on_batch`, a run is `fit`;
checkpoints are `save_checkpoint` files managed by a `CheckpointManager`.

What differs from the reference, and why:
- `trainer(...)` does the whole update (forward, backward, optimizer step, EMA):
  Keras applies the update inside its compiled step. `update()` is kept and does
  nothing, so `loss = trainer(...); trainer.update()` loops run unchanged.
- `max_batch_size` is Keras gradient accumulation: the batch is cut into equal chunks
  of at most `max_batch_size`, one per micro-step, and the optimizer updates once.
  The number of chunks is fixed per unet by the first batch it trains on.
- One trainer may train several unets one after the other (each `unet_number` change
  recompiles, keeping every unet's optimizer state).
- Checkpoints are zip files (`checkpoint.{step}.zip`), see `training.checkpoint`.
"""

import math

import keras
import numpy as np

from imagen_keras.distribution import is_chief
from imagen_keras.training.callbacks import CheckpointCallback
from imagen_keras.training.checkpoint import (
    _exists,
    checkpoint_metadata,
    load_checkpoint,
    save_checkpoint,
)
from imagen_keras.training.checkpoint_manager import CheckpointManager
from imagen_keras.training.ema import _unwrap
from imagen_keras.training.optimizers import imagen_optimizer
from imagen_keras.training.precision import precision_policy, set_precision
from imagen_keras.training.trainer_data import (
    INPUT_KEYS,
    batched,
    check_positive_int,
    examples,
    micro_batches,
    split_valid,
)

# Tensors with one row per image, which `sample(max_batch_size=...)` cuts into chunks.
_SAMPLE_BATCH_KEYS = (
    "texts",
    "text_masks",
    "text_embeds",
    "cond_images",
    "inpaint_images",
    "inpaint_masks",
    "start_image_or_video",
)


def _per_unet(value, num_unets, name):
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * num_unets
    if len(values) != num_unets:
        raise ValueError(
            f"`{name}` must be one value or one per unet ({num_unets}). Received: {name}={value!r}"
        )
    return values


def _rows(value):
    return len(value) if isinstance(value, (list, tuple)) else int(np.shape(value)[0])


class ImagenTrainer:
    """imagen-pytorch's `ImagenTrainer` on Keras: per-unet Adam + EMA, checkpoints, data.

    Args:
        imagen: the `Imagen` or `ElucidatedImagen` to train (or `None` with
            `imagen_checkpoint_path`).
        imagen_checkpoint_path: str or `None`. Rebuild the cascade, with its optimizer
            states, from this checkpoint file.
        use_ema: bool, defaults to `True`. Keep EMA weights; `sample` uses them.
        lr: float or one per unet, defaults to `1e-4`.
        eps: float or one per unet, defaults to `1e-8`.
        beta1: float, defaults to `0.9`.
        beta2: float, defaults to `0.99`.
        max_grad_norm: float or `None`. Clip the gradients' global norm.
        group_wd_params: bool. Accepted for imagen-pytorch configs; it has no effect
            there either.
        warmup_steps: int, one per unet, or `None`. Linear learning-rate warmup.
        cosine_decay_max_steps: int, one per unet, or `None`. Cosine decay to 0.
        only_train_unet_number: int or `None`. The only unet this trainer trains.
        fp16: bool, defaults to `False`. `True` is `precision="fp16"`.
        precision: str or `None`. Mixed precision: `"bf16"` (`"mixed_bfloat16"`) or
            `"fp16"` (`"mixed_float16"`, with dynamic loss scaling), or `"no"` for
            float32. Switches every layer of `imagen` to that Keras dtype policy
            (`imagen_keras.training.set_precision`); weights stay float32. `None`
            (default) keeps the policy the model was built with.
        split_batches: only `True`: the batch given is always the global batch.
        dl_tuple_output_keywords_names: names of the parts of tuple dataset elements,
            defaults to `("images", "text_embeds", "text_masks", "cond_images")`.
        verbose: bool, defaults to `True`. Progress bar and messages.
        split_valid_fraction: float, defaults to `0.025`.
        split_valid_from_train: bool, defaults to `False`. `add_train_dataset` keeps
            `split_valid_fraction` of the data apart as the validation set.
        split_random_seed: int, defaults to `42`. Seed of that split and of shuffling.
        checkpoint_path: str or `None`. Checkpoint folder (local or `gs://...`); the
            trainer resumes from its newest valid checkpoint when created.
        checkpoint_every: int or `None`. Save every this many updates (all unets
            together) into `checkpoint_path`.
        checkpoint_fs, fs_kwargs: only `None`: URLs go through `tf.io.gfile`.
        max_checkpoints_keep: int, defaults to `20`.
        max_batch_size: int or `None`. Default `max_batch_size` of every call.
        jit_compile: bool or `"auto"`, defaults to `"auto"`. Passed to `compile`.
        run_eagerly: bool, defaults to `False`. Passed to `compile`.
        **kwargs: `ema_beta`, `ema_update_after_step`, `ema_update_every`,
            `ema_inv_gamma`, `ema_power`, `ema_min_value`, `ema_schedule` (the EMA,
            as ema-pytorch's `EMA(beta=..., ...)`), and `keras.optimizers.Adam`
            arguments (`weight_decay`, `amsgrad`, ...).

    Example:
    ```python
    trainer = ImagenTrainer(imagen, lr=1e-4, warmup_steps=1000)
    loss = trainer(images, text_embeds=embeds, unet_number=1, max_batch_size=4)
    trainer.update(unet_number=1)     # a no-op: Keras updated inside the step
    images = trainer.sample(text_embeds=embeds[:2], cond_scale=3.0)
    trainer.save("checkpoint.zip")
    ```
    """

    def __init__(
        self,
        imagen=None,
        imagen_checkpoint_path=None,
        use_ema=True,
        lr=1e-4,
        eps=1e-8,
        beta1=0.9,
        beta2=0.99,
        max_grad_norm=None,
        group_wd_params=True,
        warmup_steps=None,
        cosine_decay_max_steps=None,
        only_train_unet_number=None,
        fp16=False,
        precision=None,
        split_batches=True,
        dl_tuple_output_keywords_names=("images", "text_embeds", "text_masks", "cond_images"),
        verbose=True,
        split_valid_fraction=0.025,
        split_valid_from_train=False,
        split_random_seed=42,
        checkpoint_path=None,
        checkpoint_every=None,
        checkpoint_fs=None,
        fs_kwargs=None,
        max_checkpoints_keep=20,
        max_batch_size=None,
        jit_compile="auto",
        run_eagerly=False,
        **kwargs,
    ):
        from imagen_keras.cascade import Cascade

        if (imagen is None) == (imagen_checkpoint_path is None):
            raise ValueError(
                "Give exactly one of `imagen` and `imagen_checkpoint_path`. Received: "
                f"imagen={imagen!r}, imagen_checkpoint_path={imagen_checkpoint_path!r}"
            )
        if imagen is None:
            imagen = load_checkpoint(imagen_checkpoint_path)
        if not isinstance(imagen, Cascade):
            raise ValueError(
                f"`imagen` must be an `Imagen` or `ElucidatedImagen`. Received: imagen={imagen!r}"
            )
        if fp16:
            if precision is not None and precision_policy(precision) != "mixed_float16":
                raise ValueError(
                    "`fp16=True` asks for float16; `precision` asks for another. "
                    f"Received: fp16={fp16!r}, precision={precision!r}"
                )
            precision = "fp16"
        if precision is not None:
            set_precision(imagen, precision)
        if not split_batches:
            raise ValueError(
                "The batch given to the trainer is always the global batch (split over "
                f"the devices). Received: split_batches={split_batches!r}"
            )
        if checkpoint_fs is not None or fs_kwargs is not None:
            raise ValueError(
                "Checkpoint URLs (gs://, s3://, ...) go through tf.io.gfile: pass the URL "
                "as `checkpoint_path`. Received: checkpoint_fs / fs_kwargs"
            )
        accelerate = sorted(k for k in kwargs if k.startswith("accelerate_"))
        if accelerate:
            raise ValueError(f"There is no accelerate in Keras. Received: {accelerate}")
        if not 0 <= split_valid_fraction < 1:
            raise ValueError(
                "`split_valid_fraction` must be in [0, 1). "
                f"Received: split_valid_fraction={split_valid_fraction!r}"
            )
        check_positive_int(checkpoint_every, "checkpoint_every")
        check_positive_int(max_batch_size, "max_batch_size")
        if only_train_unet_number is not None:
            imagen._check_unet_number(only_train_unet_number)
        n = imagen.num_unets
        self.imagen = imagen
        self.use_ema = use_ema
        self.lr = _per_unet(lr, n, "lr")
        self.eps = _per_unet(eps, n, "eps")
        self.warmup_steps = _per_unet(warmup_steps, n, "warmup_steps")
        self.cosine_decay_max_steps = _per_unet(cosine_decay_max_steps, n, "cosine_decay_max_steps")
        self.beta1, self.beta2 = beta1, beta2
        self.max_grad_norm = max_grad_norm
        self.group_wd_params = group_wd_params
        self.only_train_unet_number = only_train_unet_number
        self.dl_tuple_output_keywords_names = tuple(dl_tuple_output_keywords_names)
        self.verbose = verbose
        self.split_valid_fraction = split_valid_fraction
        self.split_valid_from_train = split_valid_from_train
        self.split_random_seed = split_random_seed
        self.checkpoint_every = checkpoint_every
        self.max_batch_size = max_batch_size
        self.jit_compile = jit_compile
        self.run_eagerly = run_eagerly
        self.optimizer_kwargs = kwargs
        self.train_dataset = self.valid_dataset = None
        self._train_batch_size = self._valid_batch_size = None
        self._train_iter = self._valid_iter = None
        self._valid_fns = {}
        self.checkpoint_manager = None
        if checkpoint_path is not None:
            self.checkpoint_manager = CheckpointManager(checkpoint_path, max_checkpoints_keep)
            restored = self.checkpoint_manager.restore_latest(imagen)
            if restored and verbose:
                print(f"Resumed from {restored} (steps {self.steps.tolist()}).")

    # ------------------------------------------------------------------ unets, steps

    @property
    def num_unets(self):
        return self.imagen.num_unets

    @property
    def steps(self):
        """Optimizer updates per unet (numpy int array), as the reference's `steps`."""
        return np.array(self.imagen.stage_optimizers.steps(), dtype="int64")

    def _unet_number(self, unet_number):
        if unet_number is None:
            unet_number = self.only_train_unet_number
        if unet_number is None and self.num_unets == 1:
            unet_number = 1
        if unet_number is None:
            raise ValueError(
                f"This cascade has {self.num_unets} unets: pass `unet_number`. "
                "Received: unet_number=None"
            )
        self.imagen._check_unet_number(unet_number)
        if self.only_train_unet_number not in (None, unet_number):
            raise ValueError(
                f"This trainer only trains unet {self.only_train_unet_number} "
                f"(only_train_unet_number). Received: unet_number={unet_number}"
            )
        return unet_number

    def num_steps_taken(self, unet_number=None):
        """Optimizer updates of unet `unet_number` (default: the only one)."""
        if unet_number is None and self.num_unets == 1:
            unet_number = 1
        if unet_number is None:
            raise ValueError("Pass `unet_number`: this cascade has several unets.")
        self.imagen._check_unet_number(unet_number)
        return int(self.steps[unet_number - 1])

    def get_lr(self, unet_number=None):
        """The learning rate of unet `unet_number`'s next update (None if never trained)."""
        unet_number = self._unet_number(unet_number)
        optimizer = self.imagen.stage_optimizers.get(unet_number - 1)
        if optimizer is None:
            return None
        inner = _unwrap(optimizer)
        return float(keras.ops.convert_to_numpy(inner._get_current_learning_rate()))

    def print_untrained_unets(self):
        """Print the unets that never had an update (sampling them gives noise)."""
        for number, steps in enumerate(self.steps, start=1):
            if steps == 0:
                print(f"unet {number} has not been trained")

    def encode_text(self, texts):
        """T5 embeddings and masks of `texts` (the cascade's `encode_text`)."""
        return self.imagen.encode_text(texts)

    # ------------------------------------------------------------------ compile

    def _accumulation(self, unet_number, batch_size, max_batch_size):
        """Micro-batches per update for `batch_size` rows, checked against the unet's
        optimizer (fixed once it exists)."""
        chunks = 1
        if max_batch_size is not None and batch_size > max_batch_size:
            chunks = math.ceil(batch_size / max_batch_size)
            if batch_size % chunks:
                raise ValueError(
                    f"A batch of {batch_size} cannot be cut into {chunks} equal chunks of at "
                    f"most max_batch_size={max_batch_size}; Keras' gradient accumulation "
                    "averages equal micro-batches. Use a batch size that is a multiple of "
                    "the chunk count (or drop_remainder=True in the dataset)."
                )
        optimizer = self.imagen.stage_optimizers.get(unet_number - 1)
        if optimizer is not None:
            have = _unwrap(optimizer).gradient_accumulation_steps or 1
            if have != chunks:
                raise ValueError(
                    f"Unet {unet_number}'s optimizer accumulates {have} micro-batch(es) per "
                    f"update, but a batch of {batch_size} with max_batch_size="
                    f"{max_batch_size} needs {chunks}: keep the batch size and "
                    "max_batch_size of the run that created it."
                )
        return chunks

    def _prepare(self, unet_number, chunks):
        """Compile the cascade to train `unet_number` (once per unet switch)."""
        index = unet_number - 1
        stages = self.imagen.stage_optimizers
        optimizer = None
        if stages.get(index) is None:
            optimizer = imagen_optimizer(
                lr=self.lr[index],
                eps=self.eps[index],
                beta1=self.beta1,
                beta2=self.beta2,
                max_grad_norm=self.max_grad_norm,
                warmup_steps=self.warmup_steps[index],
                cosine_decay_max_steps=self.cosine_decay_max_steps[index],
                use_ema=self.use_ema,
                gradient_accumulation_steps=chunks,
                **self.optimizer_kwargs,  # ema_* and Adam arguments
            )
        imagen = self.imagen
        if (
            optimizer is not None
            or not imagen.compiled
            or imagen.unet_number != unet_number
            or imagen.optimizer is not stages.get(index)
        ):
            imagen.compile(
                optimizer=optimizer,
                unet_number=unet_number,
                jit_compile=self.jit_compile,
                run_eagerly=self.run_eagerly,
            )

    # ------------------------------------------------------------------ steps

    def _batch(self, args, kwargs):
        if len(args) > 1:
            raise ValueError(
                f"Pass the images as the only positional argument, the rest by name. "
                f"Received {len(args)} positional arguments."
            )
        batch = dict(kwargs)
        if args:
            if "images" in batch:
                raise ValueError("`images` was given twice (positionally and by name).")
            batch["images"] = args[0]
        unknown = sorted(set(batch) - set(INPUT_KEYS))
        if unknown:
            raise ValueError(f"Unknown inputs {unknown}; expected some of {list(INPUT_KEYS)}.")
        if "images" not in batch:
            raise ValueError("`images` are required to compute a training loss.")
        return {k: v for k, v in batch.items() if v is not None}

    def _run_chunks(self, function, batch, chunks):
        rows = _rows(batch["images"])
        size = rows // chunks
        losses = []
        for j in range(chunks):
            part = {k: v[j * size : (j + 1) * size] for k, v in batch.items()}
            losses.append(float(keras.ops.convert_to_numpy(function(part))))
        return float(np.mean(losses))

    def __call__(self, *args, unet_number=None, max_batch_size=None, **kwargs):
        """One training update of unet `unet_number` on a batch; returns the loss.

        The reference's `forward` (loss and backward) followed by its `update`
        (clipping, Adam, EMA, scheduler, step count, periodic checkpoint), as one
        Keras `train_on_batch` per chunk of `max_batch_size`.

        Args:
            *args: the images (or pass `images=`).
            unet_number: int or `None` (the only unet, or `only_train_unet_number`).
            max_batch_size: int or `None` (the constructor's). Largest micro-batch.
            **kwargs: `images`, `texts`, `text_embeds`, `text_masks`, `cond_images`.

        Returns:
            float: the mean diffusion loss over the batch.
        """
        unet_number = self._unet_number(unet_number)
        batch = self._batch(args, kwargs)
        max_batch_size = max_batch_size or self.max_batch_size
        check_positive_int(max_batch_size, "max_batch_size")
        chunks = self._accumulation(unet_number, _rows(batch["images"]), max_batch_size)
        self._prepare(unet_number, chunks)
        loss = self._run_chunks(self.imagen.train_on_batch, batch, chunks)
        self._maybe_checkpoint()
        return loss

    forward = __call__

    def update(self, unet_number=None):
        """Does nothing: Keras applies the update (clipping, Adam, EMA, learning-rate
        schedule, step count) inside the training step that `trainer(...)` /
        `train_step` runs. Kept so that reference training loops run unchanged."""
        if unet_number is not None:
            self._unet_number(unet_number)

    def _maybe_checkpoint(self):
        if self.checkpoint_manager is None or self.checkpoint_every is None:
            return
        total = int(self.steps.sum())
        if total and total % self.checkpoint_every == 0 and is_chief():
            self.save_to_checkpoint_folder()

    def _next(self, which):
        dataset = self.train_dataset if which == "train" else self.valid_dataset
        if dataset is None:
            raise ValueError(
                f"No {which} dataset: call `add_{which}_dataset(dataset, batch_size=...)` "
                "first" + (" or pass the batch to `trainer(...)`." if which == "train" else ".")
            )
        iterator = self._train_iter if which == "train" else self._valid_iter
        try:
            element = next(iterator) if iterator is not None else None
        except StopIteration:
            element = None
        if element is None:  # a new epoch, as the reference's `cycle(dataloader)`
            iterator = iter(dataset)
            element = next(iterator)
        if which == "train":
            self._train_iter = iterator
        else:
            self._valid_iter = iterator
        return {k: np.asarray(v) for k, v in element.items()}

    def train_step(self, *, unet_number=None, **kwargs):
        """One update on the next batch of the train dataset; returns the loss."""
        return self(unet_number=unet_number, **self._next("train"), **kwargs)

    def valid_step(self, *, unet_number=None, use_ema_unets=False, max_batch_size=None):
        """The loss on the next batch of the valid dataset, without an update.

        Runs the cascade's forward pass compiled for inference (no gradients), texts
        encoded first.

        Args:
            unet_number: int or `None`.
            use_ema_unets: bool, defaults to `False`. Evaluate the EMA weights.
            max_batch_size: int or `None` (the constructor's). Largest chunk.
        """
        from imagen_keras.backend import compile_inference_function

        unet_number = self._unet_number(unet_number)
        batch = self._next("valid")
        if "texts" in batch:
            texts = [t.decode() if isinstance(t, bytes) else str(t) for t in batch.pop("texts")]
            batch["text_embeds"], batch["text_masks"] = self.imagen.encode_text(texts)
        if unet_number not in self._valid_fns:
            imagen = self.imagen
            self._valid_fns[unet_number] = compile_inference_function(
                imagen, lambda part: imagen(part, unet_number=unet_number, training=False)
            )
        max_batch_size = max_batch_size or self.max_batch_size
        rows = _rows(batch["images"])
        chunks = 1 if not max_batch_size else math.ceil(rows / max_batch_size)
        while rows % chunks:
            chunks += 1
        stages = self.imagen.stage_optimizers
        with stages.ema_weights(self.imagen.unets, enabled=use_ema_unets):
            return self._run_chunks(self._valid_fns[unet_number], batch, chunks)

    # ------------------------------------------------------------------ data

    def add_train_dataset(self, ds=None, *, batch_size, **dl_kwargs):
        """Train on `ds`: `train_step` reads its batches, `train` fits on it.

        Args:
            ds: a `tf.data.Dataset` of single examples (dicts with "images" and
                "texts"/"text_embeds"/..., tuples named by
                `dl_tuple_output_keywords_names`, or images), or a dict of arrays.
            batch_size: int. The batch of one update (cut into chunks of
                `max_batch_size` if that is smaller).
            **dl_kwargs: `shuffle` (default `True`), `shuffle_buffer_size` (default
                10000), `drop_remainder` (default `True`: every batch has the same size).
        """
        if self.train_dataset is not None:
            raise ValueError("A train dataset was already added.")
        dataset = examples(ds, self.dl_tuple_output_keywords_names)
        if self.split_valid_from_train:
            dataset, valid = split_valid(dataset, self.split_valid_fraction, self.split_random_seed)
            self.add_valid_dataset(valid, batch_size=batch_size)
        self.train_dataset = batched(
            dataset, batch_size, dl_kwargs, shuffle=True, seed=self.split_random_seed
        )
        self._train_batch_size = batch_size
        self._train_iter = None

    def add_valid_dataset(self, ds=None, *, batch_size, **dl_kwargs):
        """Validate on `ds` (see `add_train_dataset`; not shuffled by default)."""
        if self.valid_dataset is not None:
            raise ValueError("A valid dataset was already added.")
        dataset = examples(ds, self.dl_tuple_output_keywords_names)
        self.valid_dataset = batched(
            dataset, batch_size, dl_kwargs, shuffle=False, seed=self.split_random_seed
        )
        self._valid_batch_size = batch_size
        self._valid_iter = None

    # ------------------------------------------------------------------ fit

    def train(
        self,
        unet_number=None,
        steps=None,
        epochs=None,
        callbacks=None,
        max_batch_size=None,
        valid_every_epoch=True,
        verbose=None,
    ):
        """Train unet `unet_number` on the train dataset with Keras' `fit`.

        Checkpoints are saved every `checkpoint_every` updates (`CheckpointCallback`)
        when the trainer has a `checkpoint_path`.

        Args:
            unet_number: int or `None`.
            steps: int or `None`. Updates to run (the dataset repeats as needed).
            epochs: int or `None`. Passes over the dataset (when `steps` is `None`;
                default 1).
            callbacks: list of Keras callbacks (`SampleGrid`, `ProgressLogger`,
                `keras.callbacks.TensorBoard`, ...).
            max_batch_size: int or `None` (the constructor's).
            valid_every_epoch: bool, defaults to `True`: evaluate the valid dataset (if
                any) after every epoch.
            verbose: `fit`'s verbose; defaults to `"auto"`, or 0 if not `self.verbose`.

        Returns:
            The `keras.callbacks.History` of `fit`.
        """
        unet_number = self._unet_number(unet_number)
        if self.train_dataset is None:
            raise ValueError("No train dataset: call `add_train_dataset(ds, batch_size=...)`.")
        if steps is not None and epochs is not None:
            raise ValueError("Give `steps` or `epochs`, not both.")
        check_positive_int(steps, "steps")
        check_positive_int(epochs, "epochs")
        max_batch_size = max_batch_size or self.max_batch_size
        chunks = self._accumulation(unet_number, self._train_batch_size, max_batch_size)
        self._prepare(unet_number, chunks)
        callbacks = list(callbacks or [])
        if self.checkpoint_manager is not None and self.checkpoint_every is not None:
            callbacks.append(CheckpointCallback(self.checkpoint_manager, self.checkpoint_every))
        validation = None
        if valid_every_epoch and self.valid_dataset is not None:
            validation = micro_batches(self.valid_dataset, chunks)
        dataset = micro_batches(self.train_dataset, chunks)
        if verbose is None:
            verbose = "auto" if self.verbose else 0
        if steps is not None:
            return self.imagen.fit(
                dataset.repeat(),
                epochs=1,
                steps_per_epoch=steps * chunks,
                validation_data=validation,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,  # add_train_dataset shuffled it
            )
        return self.imagen.fit(
            dataset,
            epochs=epochs or 1,
            validation_data=validation,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,
        )

    # ------------------------------------------------------------------ sampling

    def sample(self, *args, max_batch_size=None, use_non_ema=False, **kwargs):
        """`imagen.sample(...)` with the EMA weights (unless `use_non_ema=True`).

        Args:
            *args, **kwargs: `Cascade.sample` arguments (`texts`, `text_embeds`,
                `cond_scale`, `return_pil_images`, `seed`, ...).
            max_batch_size: int or `None`. Sample at most this many images at once
                (same images: image `i` uses seed `seed + i` in every chunk).
            use_non_ema: bool, defaults to `False`.
        """
        check_positive_int(max_batch_size, "max_batch_size")
        if args:
            kwargs["texts"] = args[0]
            if len(args) > 1:
                raise ValueError("Pass the texts as the only positional argument.")
        kwargs["use_non_ema"] = use_non_ema
        kwargs.setdefault("verbose", self.verbose)
        rows = [_rows(kwargs[k]) for k in _SAMPLE_BATCH_KEYS if kwargs.get(k) is not None]
        count = rows[0] if rows else kwargs.get("batch_size", 1)
        if max_batch_size is None or count <= max_batch_size:
            return self.imagen.sample(**kwargs)
        seed = kwargs.get("seed")
        if seed is not None and not isinstance(seed, (list, tuple)):
            seed = [int(seed) + i for i in range(count)]
        outputs = []
        for start in range(0, count, max_batch_size):
            part = dict(kwargs)
            stop = min(start + max_batch_size, count)
            for k in _SAMPLE_BATCH_KEYS:
                if kwargs.get(k) is not None:
                    part[k] = kwargs[k][start:stop]
            if not rows:
                part["batch_size"] = stop - start
            if seed is not None:
                part["seed"] = list(seed[start:stop])
            outputs.append(self.imagen.sample(**part))
        return _concatenate(outputs)

    # ------------------------------------------------------------------ checkpoints

    def save(self, path, overwrite=True, without_optim_and_sched=False, **kwargs):
        """Save a checkpoint file (see `save_checkpoint`); `**kwargs` (JSON values) are
        stored in it and come back from `load`."""
        save_checkpoint(
            self.imagen,
            path,
            extra=kwargs or None,
            include_optimizers=not without_optim_and_sched,
            overwrite=overwrite,
        )

    def load(self, path, only_model=False, strict=True, noop_if_not_exist=False):
        """Restore a checkpoint file into the trainer's cascade.

        Args:
            path: str. The checkpoint file.
            only_model: bool, defaults to `False`. Leave the optimizers alone.
            strict: bool, defaults to `True`. Refuse a checkpoint of another config.
            noop_if_not_exist: bool, defaults to `False`. Return `None` instead of
                raising `FileNotFoundError` when the file is missing.

        Returns:
            The checkpoint's metadata (`checkpoint_metadata`; `"extra"` holds the
            `save(**kwargs)`), or `None`.
        """
        if noop_if_not_exist and not _exists(str(path)):
            if self.verbose:
                print(f"Trainer checkpoint not found at {path}")
            return None
        load_checkpoint(path, self.imagen, include_optimizers=not only_model, strict=strict)
        return checkpoint_metadata(path)

    def save_to_checkpoint_folder(self):
        """Save `checkpoint.{total steps}.zip` into `checkpoint_path`."""
        if self.checkpoint_manager is None:
            raise ValueError("The trainer has no `checkpoint_path`.")
        return self.checkpoint_manager.save(self.imagen)

    def load_from_checkpoint_folder(self):
        """Restore the newest valid checkpoint of `checkpoint_path` (None if none)."""
        if self.checkpoint_manager is None:
            raise ValueError("The trainer has no `checkpoint_path`.")
        path = self.checkpoint_manager.restore_latest(self.imagen)
        return path


def _concatenate(outputs):
    first = outputs[0]
    if isinstance(first, list) and first and isinstance(first[0], list):  # per stage, PIL
        return [sum((o[i] for o in outputs), []) for i in range(len(first))]
    if isinstance(first, list) and first and not hasattr(first[0], "shape"):  # PIL images
        return sum(outputs, [])
    if isinstance(first, list):  # return_all_unet_outputs: a tensor per stage
        return [keras.ops.concatenate([o[i] for o in outputs]) for i in range(len(first))]
    return keras.ops.concatenate(outputs)
