"""What the Gaussian and the elucidated cascades share: a `keras.Model` over a chain of unets.

`Cascade` owns the unets (configured in place for their stage), the low-resolution
conditioning of super-resolution stages in training, `compile`/`fit` of one stage, the
text encoder, the one `sample()` signature and serialization. Input checks are in
`cascade_inputs.py`; generation (seeds, stages, the compiled sampling loops) in
`generation/`. A subclass supplies the diffusion: `_stage_loss` (training),
`_sampler_settings` and `_sample_stage` (one stage's sampler).
"""

import contextlib

import keras
import numpy as np
from keras import ops

from imagen_keras.backend import first_replica_batch, multi_worker_step_logs, set_trainable
from imagen_keras.cascade_inputs import (
    INPUT_KEYS,
    CascadeInputs,
    check_cascade_arguments,
    per_unet,
)
from imagen_keras.diffusion.gaussian import q_sample
from imagen_keras.diffusion.schedules import get_log_snr_fn
from imagen_keras.diffusion.thresholding import dynamic_threshold, static_clip
from imagen_keras.distribution import ReplicaSeedGenerator
from imagen_keras.layers.sampling import resize_image_to
from imagen_keras.saving import AtomicSaveMixin
from imagen_keras.text.t5_widths import DEFAULT_T5_NAME, get_encoded_dim
from imagen_keras.training.non_finite import (
    NonFiniteStepMonitor,
    SkipNonFiniteOptimizer,
    _find_skipping_optimizer,
)
from imagen_keras.training.precision import loss_scaled
from imagen_keras.training.stages import StageOptimizers


@keras.saving.register_keras_serializable(package="imagen_keras")
class PassThroughLoss(keras.losses.Loss):
    """`fit`'s loss for a cascade: the model already returns its diffusion loss.

    Going through a `keras.losses.Loss` keeps Keras' loss tracking and its scaling under
    `tf.distribute` strategies. Keras skips that scaling for a rank-0 loss (its
    `reduce_values` returns scalars as they are), so the replica's batch-mean loss is
    returned as a 1-element vector: the `sum_over_batch_size` reduction then divides it
    by the number of replicas, and the replicas' summed gradients are those of the
    global-batch mean (without this, N replicas take N times too large a step).
    """

    def call(self, y_true, y_pred):
        return ops.reshape(y_pred, (-1,))


class Cascade(AtomicSaveMixin, CascadeInputs, keras.Model):
    """Base class of `Imagen` and `ElucidatedImagen`; see those for the arguments."""

    def __init__(
        self,
        unets,
        *,
        image_sizes,
        text_encoder_name=DEFAULT_T5_NAME,
        text_embed_dim=None,
        channels=3,
        cond_drop_prob=0.1,
        random_crop_sizes=None,
        lowres_noise_schedule="linear",
        lowres_sample_noise_level=0.2,
        per_sample_random_aug_noise_level=False,
        condition_on_text=True,
        auto_normalize_img=True,
        dynamic_thresholding=True,
        dynamic_thresholding_percentile=0.95,
        only_train_unet_number=None,
        resize_mode="nearest",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        unets, image_sizes, crops = check_cascade_arguments(
            unets,
            image_sizes=image_sizes,
            text_encoder_name=text_encoder_name,
            text_embed_dim=text_embed_dim,
            channels=channels,
            cond_drop_prob=cond_drop_prob,
            random_crop_sizes=random_crop_sizes,
            lowres_noise_schedule=lowres_noise_schedule,
            lowres_sample_noise_level=lowres_sample_noise_level,
            per_sample_random_aug_noise_level=per_sample_random_aug_noise_level,
            condition_on_text=condition_on_text,
            auto_normalize_img=auto_normalize_img,
            dynamic_thresholding=dynamic_thresholding,
            dynamic_thresholding_percentile=dynamic_thresholding_percentile,
            only_train_unet_number=only_train_unet_number,
            resize_mode=resize_mode,
            seed=seed,
        )
        n = len(unets)

        self.image_sizes = image_sizes
        self.text_encoder_name = text_encoder_name
        if text_embed_dim is None and condition_on_text:
            text_embed_dim = get_encoded_dim(text_encoder_name)
        self.text_embed_dim = text_embed_dim
        self.channels = channels
        self.cond_drop_prob = cond_drop_prob
        self.random_crop_sizes = crops
        self.lowres_noise_schedule = lowres_noise_schedule
        self.lowres_sample_noise_level = lowres_sample_noise_level
        self.per_sample_random_aug_noise_level = per_sample_random_aug_noise_level
        self.condition_on_text = condition_on_text
        self.auto_normalize_img = auto_normalize_img
        self.dynamic_thresholding = per_unet(dynamic_thresholding, n, "dynamic_thresholding")
        self.dynamic_thresholding_percentile = dynamic_thresholding_percentile
        self.only_train_unet_number = only_train_unet_number
        self.resize_mode = resize_mode
        self.seed = seed

        for index, unet in enumerate(unets):
            unet.cast_model_parameters(
                lowres_cond=index > 0,
                cond_on_text=condition_on_text,
                text_embed_dim=text_embed_dim if condition_on_text else None,
                channels=channels,
                channels_out=channels,
            )
            if getattr(unet, "is_null", False) and index > 0:
                raise ValueError(
                    f"A NullUnet can only be the first unet. Received one at {index + 1}."
                )
        self.unets = unets
        # Replicas of a tf.distribute strategy draw different noise for their examples.
        self.seed_generator = ReplicaSeedGenerator(seed, name="seed_generator")
        # How many training steps each unet has had (to warn before sampling noise).
        self.unet_train_steps = self.add_weight(
            shape=(n,), initializer="zeros", dtype="int32", trainable=False, name="unet_train_steps"
        )
        # Training batches refused inside a compiled step: [images out of range, NaN/inf].
        self.bad_input_batches = self.add_weight(
            shape=(2,),
            initializer="zeros",
            dtype="int32",
            trainable=False,
            name="bad_input_batches",
        )
        # One optimizer (Adam + EMA + skip counters) per unet, kept across compile calls.
        self.stage_optimizers = StageOptimizers(n)
        self.unet_number = only_train_unet_number or (1 if n == 1 else None)
        # Compiled sampling stages (see generation.stage): a plain dict that TF does not
        # track, so exporting or checkpointing a model that has sampled still works.
        object.__setattr__(self, "_stage_fns", {})
        self._generation_traces = 0  # how often a stage function was traced
        object.__setattr__(self, "_text_encoder", None)

    # ------------------------------------------------------------------ helpers

    @property
    def num_unets(self):
        return len(self.unets)

    def get_unet(self, unet_number):
        self._check_unet_number(unet_number)
        return self.unets[unet_number - 1]

    def _check_unet_number(self, unet_number):
        if (
            isinstance(unet_number, bool)
            or not isinstance(unet_number, (int, np.integer))
            or not 1 <= unet_number <= self.num_unets
        ):
            raise ValueError(
                f"`unet_number` must be an integer in [1, {self.num_unets}]. "
                f"Received: unet_number={unet_number!r}"
            )

    def normalize_img(self, images):
        return images * 2.0 - 1.0 if self.auto_normalize_img else images

    def unnormalize_img(self, images):
        return (images + 1.0) * 0.5 if self.auto_normalize_img else images

    @property
    def input_image_range(self):
        return (0.0, 1.0) if self.auto_normalize_img else (-1.0, 1.0)

    def build(self, input_shape=None):
        for unet, size in zip(self.unets, self.image_sizes):
            if not unet.built:
                unet.build((None, size, size, self.channels))
        self.built = True

    def get_build_config(self):
        return {}

    # Keras does not save SeedGenerator states; ours is saved so that a reloaded model
    # continues the same random stream (exact resumption, identical losses).
    _SEED_KEY = "seed_generator_state"

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store[self._SEED_KEY] = ops.convert_to_numpy(self.seed_generator.state)

    def load_own_variables(self, store):
        keys = list(store.keys())
        if self._SEED_KEY in keys:
            self.seed_generator.state.assign(np.asarray(store[self._SEED_KEY]))
        super().load_own_variables({k: store[k] for k in keys if k != self._SEED_KEY})

    def build_from_config(self, config):
        self.build()

    # ------------------------------------------------------------------ training

    def compile(self, optimizer=None, loss=None, unet_number=None, **kwargs):
        """Compile `fit` to train stage `unet_number` (required with several unets).

        The other unets are frozen. Each stage keeps its own optimizer, as in
        imagen-pytorch: compiling a stage again without `optimizer` continues with its
        optimizer state and EMA weights (compiling stage 2 never touches stage 1's).
        A stage whose unet computes in float16 (dtype policy `"mixed_float16"`, see
        `imagen_keras.training.set_precision`) gets its optimizer wrapped in a
        `keras.optimizers.LossScaleOptimizer`.
        `optimizer=None` gives a new stage `imagen_keras.training.imagen_optimizer()`
        (Adam with imagen-pytorch's defaults and its EMA warm-up); any other optimizer
        replaces the stage's. Every optimizer is wrapped in a `SkipNonFiniteOptimizer`:
        a step whose gradients are NaN or inf never updates the weights.
        """
        if loss is not None and not isinstance(loss, PassThroughLoss):
            raise ValueError(
                "A cascade trains on its own diffusion loss (set by the constructor: "
                "`loss_type`, `min_snr_loss_weight`, ... or EDM's); `compile` takes no "
                f"`loss`. Received: loss={loss!r}"
            )
        if unet_number is None:
            unet_number = self.unet_number
        if unet_number is None:
            raise ValueError(
                f"This cascade has {self.num_unets} unets: choose the one `fit` trains with "
                "`compile(..., unet_number=n)`. Received: unet_number=None"
            )
        self._check_unet_number(unet_number)
        if self.only_train_unet_number is not None and unet_number != self.only_train_unet_number:
            raise ValueError(
                f"This model may only train unet {self.only_train_unet_number} "
                f"(only_train_unet_number). Received: unet_number={unet_number}"
            )
        if getattr(self.unets[unet_number - 1], "is_null", False):
            raise ValueError(f"Unet {unet_number} is a NullUnet, which cannot be trained.")
        self.unet_number = unet_number
        self.build()  # first: variables created under a frozen layer would stay trainable
        for index, unet in enumerate(self.unets):
            set_trainable(unet, index == unet_number - 1)
        scaling = {}
        if optimizer is not None:
            optimizer = keras.optimizers.get(optimizer)
            if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
                # Re-wrapped below, outside the non-finite guard (which would otherwise
                # skip the overflowing steps the scaler must see to lower its scale).
                scaling = dict(
                    initial_scale=optimizer.initial_scale,
                    dynamic_growth_steps=optimizer.dynamic_growth_steps,
                )
                optimizer = optimizer.inner_optimizer
            if _find_skipping_optimizer(optimizer) is None:
                optimizer = SkipNonFiniteOptimizer(optimizer)
            if scaling:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer, **scaling)
        optimizer = self.stage_optimizers.select(unet_number - 1, optimizer)
        # float16 compute needs loss scaling; the scaler is kept with the stage.
        policy = self.unets[unet_number - 1].dtype_policy.name
        optimizer = loss_scaled(optimizer, policy)
        self.stage_optimizers.optimizers[unet_number - 1] = optimizer
        super().compile(optimizer=optimizer, loss=loss or PassThroughLoss(), **kwargs)
        if not self.optimizer.built:
            # Now, not inside the first traced train step: TensorFlow traces a function
            # that creates variables twice (the demo's first step took 62 s instead of 36).
            strategy = getattr(self, "_distribute_strategy", None)  # TF's, when compiled in one
            with strategy.scope() if strategy is not None else contextlib.nullcontext():
                self.optimizer.build(self.trainable_variables)

    def get_compile_config(self):
        # With the stage, a loaded `.keras` file is compiled for the same stage and gets
        # that stage's optimizer state back (other stages: see training.checkpoint).
        config = super().get_compile_config()
        if config is not None and self.unet_number is not None:
            config = dict(config, unet_number=self.unet_number)
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)  # builds the optimizer: its state is loaded next

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # `call` returns the diffusion loss; the built-in path tracks and scales it.
        return keras.Model.compute_loss(
            self, x=x, y=y_pred, y_pred=y_pred, sample_weight=None, training=training
        )

    def call(
        self,
        images,
        texts=None,
        text_embeds=None,
        text_masks=None,
        unet_number=None,
        cond_images=None,
        training=None,
    ):
        """The diffusion loss of one stage on a batch (imagen-pytorch's `forward`).

        `images` may also be a dict with keys "images", "text_embeds", "text_masks",
        "cond_images" (what `fit` passes through from a dataset).
        """
        if isinstance(images, dict):
            unknown = set(images) - set(INPUT_KEYS)
            if unknown or "images" not in images:
                raise ValueError(
                    f'`images` as a dict needs an "images" key and only keys of {INPUT_KEYS}. '
                    f"Received keys: {sorted(images)}"
                )
            inputs = dict(images)
            images = inputs.pop("images")
            texts = inputs.get("texts", texts)
            text_embeds = inputs.get("text_embeds", text_embeds)
            text_masks = inputs.get("text_masks", text_masks)
            cond_images = inputs.get("cond_images", cond_images)
        if unet_number is None:
            unet_number = self.unet_number
        if unet_number is None and self.num_unets == 1:
            unet_number = 1
        if unet_number is None:
            raise ValueError(
                f"This cascade has {self.num_unets} unets: pass `unet_number` "
                "(or compile with one). Received: unet_number=None"
            )
        self._check_unet_number(unet_number)
        index = unet_number - 1
        unet = self.unets[index]
        if getattr(unet, "is_null", False):
            raise ValueError(f"Unet {unet_number} is a NullUnet, which cannot be trained.")
        images = self._prepare_images(images, index)
        text_embeds, text_masks = self._prepare_text(texts, text_embeds, text_masks, images)
        if cond_images is not None:
            cond_images = self._as_float_images(cond_images, "cond_images")

        x_start, unet_kwargs = self._training_inputs(
            index, images, text_embeds, text_masks, cond_images
        )
        loss = self._stage_loss(unet, index, x_start, unet_kwargs, training)
        if training:
            # Inside a compiled step the values cannot be checked before the step: a
            # batch out of range or with NaN/inf pixels makes the loss (and so the
            # gradients) NaN, the optimizer skips the step, and `fit` reports it.
            low, high = self.input_image_range
            out_of_range = ops.logical_or(
                ops.any(images < low - 1e-3), ops.any(images > high + 1e-3)
            )
            non_finite = ops.logical_not(ops.all(ops.isfinite(images)))
            flags = ops.cast(ops.stack([out_of_range, non_finite]), "int32")
            self.bad_input_batches.assign(self.bad_input_batches + flags)
            bad = ops.any(flags > 0)
            loss = loss * ops.where(bad, float("nan"), 1.0)
            step = ops.one_hot(index, self.num_unets, dtype="int32")
            self.unet_train_steps.assign(
                self.unet_train_steps + step * (1 - ops.cast(bad, "int32"))
            )
        return loss

    def _training_inputs(self, index, images, text_embeds, text_masks, cond_images):
        """The stage's normalized (cropped) target images and the unet's conditioning.

        Super-resolution stages see the image downsampled to the previous stage's size
        and back, noised to a random augmentation time `t_aug` of the low-res schedule;
        the unet is told `lowres_noise_times = log_snr(t_aug)` (Ho et al., "Cascaded
        Diffusion Models", noise conditioning augmentation).
        """
        batch = ops.shape(images)[0]
        size = self.image_sizes[index]
        lowres_cond_img = None
        if index > 0:
            low, high = self.input_image_range
            lowres = resize_image_to(images, self.image_sizes[index - 1], self.resize_mode)
            lowres = ops.clip(lowres, low, high)
            lowres_cond_img = ops.clip(resize_image_to(lowres, size, self.resize_mode), low, high)
            lowres_cond_img = self.normalize_img(lowres_cond_img)
        x_start = self.normalize_img(resize_image_to(images, size, self.resize_mode))
        crop = self.random_crop_sizes[index]
        if crop is not None:
            x_start, lowres_cond_img = self._random_crop(crop, x_start, lowres_cond_img)

        unet_kwargs = dict(text_embeds=text_embeds, text_mask=text_masks, cond_images=cond_images)
        if lowres_cond_img is not None:
            if self.per_sample_random_aug_noise_level:
                aug_times = keras.random.uniform((batch,), seed=self.seed_generator)
            else:
                aug = keras.random.uniform((1,), seed=self.seed_generator)
                aug_times = ops.broadcast_to(aug, (batch,))
            lowres_fn = get_log_snr_fn(self.lowres_noise_schedule)
            lowres_noise = keras.random.normal(ops.shape(lowres_cond_img), seed=self.seed_generator)
            unet_kwargs["lowres_cond_img"], *_ = q_sample(
                lowres_cond_img, aug_times, lowres_noise, lowres_fn
            )
            unet_kwargs["lowres_noise_times"] = lowres_fn(aug_times)
        if text_embeds is not None:
            unet_kwargs["text_keep_mask"] = self._text_keep_mask(batch)
        return x_start, unet_kwargs

    def _stage_loss(self, unet, index, x_start, unet_kwargs, training):
        """The diffusion loss of stage `index` on `x_start` (in [-1, 1]); subclasses."""
        raise NotImplementedError

    def _self_condition(self, unet, unet_kwargs, estimate_fn):
        """Self-conditioning (Chen et al. 2022): half the time, feed the model's own
        (gradient-stopped) clean-image estimate; the other half, zeros."""
        if not unet.self_cond:
            return unet_kwargs
        estimate = ops.stop_gradient(estimate_fn())
        use = keras.random.uniform((), seed=self.seed_generator) < 0.5
        return {**unet_kwargs, "self_cond": ops.where(use, estimate, ops.zeros_like(estimate))}

    def _text_keep_mask(self, batch):
        if self.cond_drop_prob == 0:
            return ops.ones((batch,), dtype="bool")
        if self.cond_drop_prob == 1:
            return ops.zeros((batch,), dtype="bool")
        return keras.random.uniform((batch,), seed=self.seed_generator) >= self.cond_drop_prob

    def _random_crop(self, crop, *tensors):
        """The same random `crop` x `crop` window (one per batch) of every tensor."""
        size = tensors[0].shape[1]
        if crop > size:
            raise ValueError(f"random_crop_size {crop} is larger than the image size {size}.")
        offsets = keras.random.randint((2,), 0, size - crop + 1, seed=self.seed_generator)
        out = []
        for t in tensors:
            if t is None:
                out.append(None)
                continue
            shape = ops.shape(t)
            start = ops.stack([0, offsets[0], offsets[1], 0])
            out.append(ops.slice(t, start, (shape[0], crop, crop, t.shape[-1])))
        return out

    # ------------------------------------------------------------------ text

    @property
    def text_encoder(self):
        """The `T5Encoder` that encodes `texts=`; loaded from `text_encoder_name` (a
        keras-hub preset name, imagen-pytorch T5 name or local preset folder) on first
        use, or set with `set_text_encoder`. It is not saved with the model."""
        if self._text_encoder is None:
            from imagen_keras.text.loader import load_text_encoder

            self.set_text_encoder(load_text_encoder(self.text_encoder_name))
        return self._text_encoder

    def set_text_encoder(self, encoder):
        """Use `encoder` (a `T5Encoder`) for `texts=`; its width must be `text_embed_dim`."""
        if not self.condition_on_text:
            raise ValueError("This model has condition_on_text=False: it takes no text encoder.")
        width = getattr(encoder, "embed_dim", None)
        if width != self.text_embed_dim:
            raise ValueError(
                f"The text encoder's width must equal text_embed_dim={self.text_embed_dim}. "
                f"Received: an encoder of width {width!r} ({encoder!r})"
            )
        # Not tracked as a sublayer: the frozen encoder is not part of the saved model.
        object.__setattr__(self, "_text_encoder", encoder)

    @property
    def max_text_len(self):
        """Tokens the unets read (texts are padded or truncated to this)."""
        return max(getattr(u, "max_text_len", 1) for u in self.unets)

    def encode_text(self, texts):
        """T5 embeddings of `texts` (list of str): `(embeds, masks)` numpy arrays padded or
        truncated to `max_text_len` tokens, padded positions zero."""
        return self.text_encoder.encode(texts, pad_to=self.max_text_len)

    def _encode_data_texts(self, data):
        from imagen_keras.text.datasets import encode_texts_in_data, has_texts

        if data is None or not self.condition_on_text or not has_texts(data):
            return data
        return encode_texts_in_data(
            data, self.encode_text, embed_dim=self.text_embed_dim, length=self.max_text_len
        )

    def train_step(self, *args, **kwargs):
        return multi_worker_step_logs(self, super().train_step(*args, **kwargs))

    def test_step(self, *args, **kwargs):
        return multi_worker_step_logs(self, super().test_step(*args, **kwargs))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # TensorFlow trainer only: see `backend.first_replica_batch`.
        strategy = getattr(self, "_distribute_strategy", None)
        if strategy is not None and iterator is not None and data_batch is None:
            data_batch, iterator = first_replica_batch(iterator, strategy), None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def fit(self, x=None, y=None, *args, validation_data=None, callbacks=None, **kwargs):
        """`keras.Model.fit`; data with a "texts" key (dict of arrays or batched
        tf.data.Dataset of dicts) is encoded with the text encoder first.

        Two monitors are added to the callbacks: a batch of images out of range stops
        training with a `ValueError` (its step was skipped, no weight changed), and
        steps with NaN or inf gradients are skipped, reported, and stop training after
        the optimizer's `max_consecutive_non_finite` in a row.
        """
        x = self._encode_data_texts(x)
        validation_data = self._encode_data_texts(validation_data)
        callbacks = list(callbacks or [])
        if not any(isinstance(c, InputRangeMonitor) for c in callbacks):
            callbacks.append(InputRangeMonitor())
        # Under tf.distribute the skip counters are replica variables that the monitor
        # cannot read from the host yet: the steps are still skipped, not reported.
        from imagen_keras.distribution import num_replicas

        monitor_skips = keras.backend.backend() != "tensorflow" or num_replicas() == 1
        if (
            monitor_skips
            and _find_skipping_optimizer(getattr(self, "optimizer", None))
            and not any(isinstance(c, NonFiniteStepMonitor) for c in callbacks)
        ):
            callbacks.append(NonFiniteStepMonitor())
        return super().fit(
            x, y, *args, validation_data=validation_data, callbacks=callbacks, **kwargs
        )

    def train_on_batch(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.train_on_batch`; a "texts" key is encoded first, as in `fit`.
        A batch of images out of range raises a `ValueError` after its (skipped) step."""
        before = ops.convert_to_numpy(self.bad_input_batches).copy()
        logs = super().train_on_batch(self._encode_data_texts(x), y, *args, **kwargs)
        check_bad_inputs(self, before)
        return logs

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`; a "texts" key is encoded first, as in `fit`."""
        return super().evaluate(self._encode_data_texts(x), y, *args, **kwargs)

    # ------------------------------------------------------------------ sampling

    def sample(
        self,
        texts=None,
        text_masks=None,
        text_embeds=None,
        cond_images=None,
        inpaint_images=None,
        inpaint_masks=None,
        inpaint_resample_times=5,
        init_images=None,
        skip_steps=None,
        batch_size=1,
        cond_scale=1.0,
        cfg_remove_parallel_component=True,
        cfg_keep_parallel_frac=0.0,
        lowres_sample_noise_level=None,
        start_at_unet_number=1,
        start_image_or_video=None,
        stop_at_unet_number=None,
        return_all_unet_outputs=False,
        return_pil_images=False,
        seed=None,
        verbose=True,
        use_non_ema=False,
        **sampler_options,
    ):
        """Generate images through the cascade (imagen-pytorch's `Imagen.sample`).

        Returns images in [0, 1], channels-last, as a backend tensor (a list of PIL
        images with `return_pil_images=True`; a list per stage with
        `return_all_unet_outputs=True`).

        Args:
            texts: list of str, encoded with the text encoder; or give `text_embeds`
                `(batch, tokens, text_embed_dim)` and optionally `text_masks`.
            cond_images: condition images of unets with `cond_images_channels`.
            inpaint_images, inpaint_masks: known images and `(batch, height, width)`
                bools (True where known); the known region is kept (RePaint).
            inpaint_resample_times: int, defaults to 5. RePaint resamplings per step.
            init_images: images added to each stage's initial noise (or one per
                unet); with `skip_steps`, an image-to-image start.
            skip_steps: int or per-unet list, first sampler steps to skip.
            batch_size: int, defaults to 1; the number of images when no text,
                image or seed list gives it.
            cond_scale: float or per-unet list, defaults to 1. Classifier-free
                guidance scale (1: none). Changing it does not recompile.
            cfg_remove_parallel_component: bool, defaults to `True`.
            cfg_keep_parallel_frac: float in [0, 1], defaults to 0.
            lowres_sample_noise_level: float in [0, 1] or `None` (the constructor's).
            start_at_unet_number, start_image_or_video, stop_at_unet_number: run
                only part of the cascade, from the given images of the previous stage.
            return_all_unet_outputs, return_pil_images: see above.
            seed: int, list of ints or `None`. Image `i` is drawn from its own seed
                (`seed + i` for an int, `seed[i]` for a list) and depends on nothing
                else: `sample(seed=[5, 6, 7])[1]` is `sample(seed=6)` for the same
                inputs, whatever the batch.
            verbose: bool, defaults to `True`: a progress bar over the stages.
            use_non_ema: bool, defaults to `False`: stages trained with an EMA
                optimizer (the default `imagen_optimizer`) sample with their EMA
                weights, also in the middle of training; `True` uses the online ones.
            **sampler_options: the cascade's sampler settings (see the subclass).
        """
        from imagen_keras.generation.generate import generate

        with self.stage_optimizers.ema_weights(self.unets, enabled=not use_non_ema):
            return generate(
                self,
                texts=texts,
                text_masks=text_masks,
                text_embeds=text_embeds,
                cond_images=cond_images,
                inpaint_images=inpaint_images,
                inpaint_masks=inpaint_masks,
                inpaint_resample_times=inpaint_resample_times,
                init_images=init_images,
                skip_steps=skip_steps,
                batch_size=batch_size,
                cond_scale=cond_scale,
                cfg_remove_parallel_component=cfg_remove_parallel_component,
                cfg_keep_parallel_frac=cfg_keep_parallel_frac,
                lowres_sample_noise_level=lowres_sample_noise_level,
                start_at_unet_number=start_at_unet_number,
                start_image_or_video=start_image_or_video,
                stop_at_unet_number=stop_at_unet_number,
                return_all_unet_outputs=return_all_unet_outputs,
                return_pil_images=return_pil_images,
                seed=seed,
                verbose=verbose,
                sampler_options=sampler_options,
            )

    def _sampler_settings(self, options):
        """Per unet, a dict of the sampler's settings for `sample(**options)`:
        `"static"` (hashable, part of the compiled stage's key), `"num_steps"` (int)
        and other runtime scalars passed to the stage as tensors; subclasses."""
        raise NotImplementedError

    def _sample_stage(self, index, structure, network, noise, inputs):
        """Sample stage `index` with the guided `network(x, noise_cond, self_cond)`;
        `noise(draw)` is the stage's per-image noise. Returns `x` in the model range
        (unclipped); subclasses. See `generation.stage`."""
        raise NotImplementedError

    def _threshold(self, index):
        """The clean-image estimate's thresholding of stage `index` (Imagen 2.3)."""
        if self.dynamic_thresholding[index]:
            percentile = self.dynamic_thresholding_percentile
            return lambda x0: dynamic_threshold(x0, percentile)
        return static_clip

    # ------------------------------------------------------------------ config

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "unets": [keras.saving.serialize_keras_object(u) for u in self.unets],
                "image_sizes": list(self.image_sizes),
                "text_encoder_name": self.text_encoder_name,
                "text_embed_dim": self.text_embed_dim,
                "channels": self.channels,
                "cond_drop_prob": self.cond_drop_prob,
                "random_crop_sizes": list(self.random_crop_sizes),
                "lowres_noise_schedule": self.lowres_noise_schedule,
                "lowres_sample_noise_level": self.lowres_sample_noise_level,
                "per_sample_random_aug_noise_level": self.per_sample_random_aug_noise_level,
                "condition_on_text": self.condition_on_text,
                "auto_normalize_img": self.auto_normalize_img,
                "dynamic_thresholding": list(self.dynamic_thresholding),
                "dynamic_thresholding_percentile": self.dynamic_thresholding_percentile,
                "only_train_unet_number": self.only_train_unet_number,
                "resize_mode": self.resize_mode,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["unets"] = [keras.saving.deserialize_keras_object(u) for u in config["unets"]]
        return cls(**config)


def check_bad_inputs(model, before):
    """Raise if training batches were refused for images out of range since `before`."""
    now = ops.convert_to_numpy(model.bad_input_batches)
    if now[0] > before[0]:
        low, high = model.input_image_range
        raise ValueError(
            f"`images` must be in [{low}, {high}] (auto_normalize_img="
            f"{model.auto_normalize_img}; uint8 images are divided by 255). Received: a "
            f"training batch with values outside that range ({int(now[0] - before[0])} "
            "batch(es)); its step was skipped and no weight changed. Scale float images "
            "from 0..255 to [0, 1] (or pass uint8)."
        )


class InputRangeMonitor(keras.callbacks.Callback):
    """Stops `fit` with a `ValueError` at the first batch of images out of range (the
    check runs inside the compiled step, which skips that batch's update)."""

    def on_train_begin(self, logs=None):
        self._before = ops.convert_to_numpy(self.model.bad_input_batches).copy()

    def on_train_batch_end(self, batch, logs=None):
        check_bad_inputs(self.model, self._before)
