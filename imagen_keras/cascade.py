"""What the Gaussian and the elucidated cascades share: a `keras.Model` over a chain of unets.

`Cascade` owns the unets (configured in place for their stage), the input checks, the
low-resolution conditioning of super-resolution stages, `compile`/`fit` of one stage,
the sampling orchestration (stage by stage, each stage one compiled loop) and
serialization. A subclass supplies the diffusion: `_stage_loss` (training) and
`_make_stage_fn` / `_stage_options` (one stage's sampler).
"""

import random as py_random
import warnings

import keras
import numpy as np
from keras import ops

from imagen_keras.backend import compile_inference_function, is_concrete
from imagen_keras.diffusion.gaussian import q_sample
from imagen_keras.diffusion.noise import initial_seed_state, step_normal
from imagen_keras.diffusion.schedules import get_log_snr_fn
from imagen_keras.layers.sampling import resize_image_to
from imagen_keras.text.t5_widths import DEFAULT_T5_NAME, get_encoded_dim

INPUT_KEYS = ("images", "texts", "text_embeds", "text_masks", "cond_images")


def per_unet(value, num_unets, name):
    """`value` as a tuple with one entry per unet (a scalar is repeated)."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_unets:
            raise ValueError(
                f"`{name}` must have one value per unet ({num_unets}). Received: {name}={value!r}"
            )
        return tuple(value)
    return (value,) * num_unets


def check_non_negative_int(value, name):
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0
    ):
        raise ValueError(f"`{name}` must be a non-negative int or None. Received: {name}={value!r}")


@keras.saving.register_keras_serializable(package="imagen_keras")
class PassThroughLoss(keras.losses.Loss):
    """`fit`'s loss for a cascade: the model already returns its diffusion loss.

    Going through a `keras.losses.Loss` keeps Keras' loss tracking and its scaling under
    `tf.distribute` strategies.
    """

    def call(self, y_true, y_pred):
        return y_pred


class Cascade(keras.Model):
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
        unets = list(unets) if isinstance(unets, (list, tuple)) else [unets]
        n = len(unets)
        if n == 0:
            raise ValueError("`unets` must hold at least one unet. Received: unets=[]")
        image_sizes = per_unet(image_sizes, n, "image_sizes")
        if list(image_sizes) != sorted(image_sizes):
            raise ValueError(f"`image_sizes` must increase. Received: image_sizes={image_sizes}")
        crops = per_unet(random_crop_sizes, n, "random_crop_sizes")
        if crops[0] is not None:
            raise ValueError(
                "The first unet is never randomly cropped; use e.g. random_crop_sizes=(None, 64). "
                f"Received: random_crop_sizes={random_crop_sizes!r}"
            )
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"`cond_drop_prob` must be in [0, 1]. Received: {cond_drop_prob}")
        if only_train_unet_number is not None and not 1 <= only_train_unet_number <= n:
            raise ValueError(
                f"`only_train_unet_number` must be in [1, {n}]. "
                f"Received: only_train_unet_number={only_train_unet_number}"
            )
        get_log_snr_fn(lowres_noise_schedule)

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
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        # How many training steps each unet has had (to warn before sampling noise).
        self.unet_train_steps = self.add_weight(
            shape=(n,), initializer="zeros", dtype="int32", trainable=False, name="unet_train_steps"
        )
        self.unet_number = only_train_unet_number or (1 if n == 1 else None)
        self._sample_fns = {}
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

    def compile(self, optimizer="adam", loss=None, unet_number=None, **kwargs):
        """Compile `fit` to train stage `unet_number` (required with several unets).

        The other unets are frozen. To train another stage, compile again with its
        number (each stage then gets its own optimizer state, as in imagen-pytorch).
        """
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
            unet.trainable = index == unet_number - 1
        super().compile(optimizer=optimizer, loss=loss or PassThroughLoss(), **kwargs)

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
            if unknown:
                raise ValueError(
                    f"Unknown input keys {sorted(unknown)}; expected some of {INPUT_KEYS}."
                )
            inputs = dict(images)
            images = inputs.pop("images")
            texts = inputs.get("texts", texts)
            text_embeds = inputs.get("text_embeds", text_embeds)
            text_masks = inputs.get("text_masks", text_masks)
            cond_images = inputs.get("cond_images", cond_images)
        unet_number = unet_number or self.unet_number or (1 if self.num_unets == 1 else None)
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
            self.unet_train_steps.assign(
                self.unet_train_steps + ops.one_hot(index, self.num_unets, dtype="int32")
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

    def _as_float_images(self, images, name):
        images = ops.convert_to_tensor(images)
        if len(images.shape) != 4:
            raise ValueError(
                f"`{name}` must be (batch, height, width, channels). "
                f"Received: {name}.shape={tuple(images.shape)}"
            )
        if keras.backend.standardize_dtype(images.dtype) == "uint8":
            return ops.cast(images, "float32") / 255.0
        return ops.cast(images, "float32")

    def _prepare_images(self, images, index):
        is_uint8 = keras.backend.standardize_dtype(getattr(images, "dtype", "float32")) == "uint8"
        images = self._as_float_images(images, "images")
        if not is_uint8 and is_concrete(images):  # a value check only outside compiled code
            low, high = self.input_image_range
            lo, hi = float(ops.min(images)), float(ops.max(images))
            if lo < low - 1e-3 or hi > high + 1e-3:
                raise ValueError(
                    f"`images` must be in [{low}, {high}] (auto_normalize_img="
                    f"{self.auto_normalize_img}). Received values in [{lo:.3g}, {hi:.3g}]"
                )
        _, h, w, c = images.shape
        size = self.image_sizes[index]
        if c != self.channels or (h is not None and h != w):
            raise ValueError(
                f"`images` must be square with {self.channels} channels (channels-last). "
                f"Received: images.shape={tuple(images.shape)}"
            )
        if h is not None and h < size:
            raise ValueError(
                f"Unet {index + 1} trains at {size}x{size}; `images` must be at least that "
                f"large. Received: images.shape={tuple(images.shape)}"
            )
        return images

    def _prepare_text(self, texts, text_embeds, text_masks, images):
        if texts is not None and text_embeds is None and self.condition_on_text:
            if not is_concrete(images if images is not None else ops.zeros(())):
                raise ValueError(
                    "`texts` cannot be encoded inside a compiled training step. Give `fit` "
                    "a dict of arrays or a batched tf.data.Dataset with a 'texts' key (both "
                    "are encoded before the step), attach an EmbeddingCache to the dataset, "
                    "or pass `text_embeds`."
                )
            text_embeds, text_masks = self.encode_text(texts)
        if not self.condition_on_text:
            if text_embeds is not None or texts is not None:
                raise ValueError(
                    "This model has condition_on_text=False but `text_embeds` or `texts` "
                    "were given."
                )
            return None, None
        if text_embeds is None:
            raise ValueError("This Imagen is text-conditioned: pass `text_embeds` (or `texts`).")
        text_embeds = ops.cast(ops.convert_to_tensor(text_embeds), "float32")
        if len(text_embeds.shape) != 3 or text_embeds.shape[-1] != self.text_embed_dim:
            raise ValueError(
                f"`text_embeds` must be (batch, tokens, {self.text_embed_dim}). "
                f"Received: text_embeds.shape={tuple(text_embeds.shape)}"
            )
        if (
            images is not None
            and images.shape[0] is not None
            and text_embeds.shape[0] is not None
            and images.shape[0] != text_embeds.shape[0]
        ):
            raise ValueError(
                "`text_embeds` must have one row per image. Received: "
                f"images.shape={tuple(images.shape)}, text_embeds.shape={tuple(text_embeds.shape)}"
            )
        if text_masks is None:
            text_masks = ops.any(ops.not_equal(text_embeds, 0.0), axis=-1)
        else:
            text_masks = ops.cast(ops.convert_to_tensor(text_masks), "bool")
            if tuple(text_masks.shape) != tuple(text_embeds.shape[:2]):
                raise ValueError(
                    f"`text_masks` must be (batch, tokens) = {tuple(text_embeds.shape[:2])}. "
                    f"Received: text_masks.shape={tuple(text_masks.shape)}"
                )
        return text_embeds, text_masks

    def _warn_untrained(self, first, last):
        steps = ops.convert_to_numpy(self.unet_train_steps)
        untrained = [n for n in range(first, last + 1) if steps[n - 1] == 0]
        if untrained:
            trained = [n for n in range(1, self.num_unets + 1) if steps[n - 1] > 0]
            hint = (
                f" Trained so far: {trained}; stop at the last trained stage with "
                f"`stop_at_unet_number={max(trained)}`."
                if trained
                else ""
            )
            warnings.warn(
                f"Unet(s) {untrained} have never been trained in this model: their samples "
                f"will be noise.{hint}",
                stacklevel=4,
            )

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

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        """`keras.Model.fit`; data with a "texts" key (dict of arrays or batched
        tf.data.Dataset of dicts) is encoded with the text encoder first."""
        x = self._encode_data_texts(x)
        validation_data = self._encode_data_texts(validation_data)
        return super().fit(x, y, *args, validation_data=validation_data, **kwargs)

    def train_on_batch(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.train_on_batch`; a "texts" key is encoded first, as in `fit`."""
        return super().train_on_batch(self._encode_data_texts(x), y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`; a "texts" key is encoded first, as in `fit`."""
        return super().evaluate(self._encode_data_texts(x), y, *args, **kwargs)

    # ------------------------------------------------------------------ sampling

    def _sample(
        self,
        *,
        texts,
        text_masks,
        text_embeds,
        cond_images,
        inpaint_images,
        inpaint_masks,
        inpaint_resample_times,
        init_images,
        skip_steps,
        batch_size,
        cond_scale,
        cfg_remove_parallel_component,
        cfg_keep_parallel_frac,
        lowres_sample_noise_level,
        start_at_unet_number,
        start_image_or_video,
        stop_at_unet_number,
        return_all_unet_outputs,
        return_pil_images,
        seed,
        verbose,
        stage_options,
    ):
        """Run the cascade; `stage_options(index)` gives the sampler's per-stage settings
        (hashable, part of the compiled function's cache key)."""
        self.build()
        n = self.num_unets
        text_embeds, text_masks = self._prepare_text(texts, text_embeds, text_masks, None)
        if text_embeds is not None:
            batch_size = text_embeds.shape[0]
        if inpaint_images is not None or inpaint_masks is not None:
            if inpaint_images is None or inpaint_masks is None:
                raise ValueError("Inpainting needs both `inpaint_images` and `inpaint_masks`.")
            inpaint_images = self._as_float_images(inpaint_images, "inpaint_images")
            if text_embeds is None and batch_size == 1:
                batch_size = inpaint_images.shape[0]
            inpaint_masks = ops.convert_to_tensor(inpaint_masks)
            expected = (batch_size, *inpaint_images.shape[1:3])
            if inpaint_images.shape[0] != batch_size or tuple(inpaint_masks.shape) != expected:
                raise ValueError(
                    f"`inpaint_images` must be ({batch_size}, h, w, {self.channels}) and "
                    f"`inpaint_masks` ({batch_size}, h, w). Received: inpaint_images.shape="
                    f"{tuple(inpaint_images.shape)}, "
                    f"inpaint_masks.shape={tuple(inpaint_masks.shape)}"
                )
            check_non_negative_int(inpaint_resample_times, "inpaint_resample_times")
            if inpaint_resample_times < 1:
                raise ValueError(
                    "`inpaint_resample_times` must be at least 1. "
                    f"Received: inpaint_resample_times={inpaint_resample_times}"
                )
        cond_scales = per_unet(cond_scale, n, "cond_scale")
        if any(s != 1 for s in cond_scales) and self.cond_drop_prob == 0:
            raise ValueError(
                "Classifier-free guidance (cond_scale != 1) needs a model trained with "
                f"cond_drop_prob > 0. Received: cond_scale={cond_scale}, cond_drop_prob=0"
            )
        # Like the reference, one image (not a per-unet list) initialises every stage.
        if not isinstance(init_images, (list, tuple)):
            init_images = (init_images,) * n
        init_images = per_unet(init_images, n, "init_images")
        skip_steps = per_unet(skip_steps, n, "skip_steps")
        for skip in skip_steps:
            check_non_negative_int(skip, "skip_steps")
        if cond_images is not None:
            cond_images = self._as_float_images(cond_images, "cond_images")
        level = (
            self.lowres_sample_noise_level
            if lowres_sample_noise_level is None
            else lowres_sample_noise_level
        )
        if not 1 <= start_at_unet_number <= n:
            raise ValueError(
                f"`start_at_unet_number` must be in [1, {n}]. Received: {start_at_unet_number}"
            )
        stop = n if stop_at_unet_number is None else stop_at_unet_number
        if not start_at_unet_number <= stop <= n:
            raise ValueError(
                f"`stop_at_unet_number` must be in [{start_at_unet_number}, {n}]. "
                f"Received: stop_at_unet_number={stop_at_unet_number}"
            )
        img = None
        if start_at_unet_number > 1:
            if start_image_or_video is None:
                raise ValueError("`start_at_unet_number > 1` needs `start_image_or_video`.")
            img = self._as_float_images(start_image_or_video, "start_image_or_video")
            img = resize_image_to(img, self.image_sizes[start_at_unet_number - 2], self.resize_mode)
            batch_size = img.shape[0]
        options = [stage_options(index) for index in range(n)]
        self._warn_untrained(start_at_unet_number, stop)

        seed = py_random.randint(1, 2**31 - 1) if seed is None else seed
        base_state = initial_seed_state(seed)
        outputs = []
        progbar = keras.utils.Progbar(stop - start_at_unet_number + 1, verbose=int(bool(verbose)))
        for number in range(start_at_unet_number, stop + 1):
            index = number - 1
            if getattr(self.unets[index], "is_null", False):
                raise ValueError(f"Unet {number} is a NullUnet: there is nothing to sample from.")
            size = self.image_sizes[index]
            stage_state = base_state + ops.convert_to_tensor([0, 10**6 * index], "uint32")
            tensors = dict(
                text_embeds=text_embeds,
                text_masks=text_masks,
                cond_images=cond_images,
                prev=img,
                init=None,
                inpaint=None,
                mask=None,
            )
            if init_images[index] is not None:
                init = self._as_float_images(init_images[index], "init_images")
                tensors["init"] = self.normalize_img(resize_image_to(init, size, self.resize_mode))
            if inpaint_images is not None:
                tensors["inpaint"] = self.normalize_img(
                    resize_image_to(inpaint_images, size, self.resize_mode)
                )
                mask = ops.cast(inpaint_masks, "float32")[..., None]
                tensors["mask"] = ops.cast(resize_image_to(mask, size, "nearest"), "bool")
            key = (
                index,
                int(batch_size),
                float(cond_scales[index]),
                int(skip_steps[index] or 0),
                int(inpaint_resample_times) if inpaint_images is not None else 1,
                bool(cfg_remove_parallel_component),
                float(cfg_keep_parallel_frac),
                float(level),
                options[index],
                tuple(k for k, v in tensors.items() if v is not None),
            )
            if key not in self._sample_fns:
                self._sample_fns[key] = compile_inference_function(
                    self, self._make_stage_fn(*key[:-1])
                )
            img = self.unnormalize_img(self._sample_fns[key](stage_state, tensors))
            outputs.append(img)
            progbar.add(1)

        if return_pil_images:
            from PIL import Image

            def to_pil(batch):
                array = np.clip(np.round(ops.convert_to_numpy(batch) * 255.0), 0, 255)
                return [Image.fromarray(a.astype(np.uint8).squeeze()) for a in array]

            outputs = [to_pil(o) for o in outputs]
        return outputs if return_all_unet_outputs else outputs[-1]

    def _make_stage_fn(
        self, index, batch, cond_scale, skip, resample, remove_parallel, keep_frac, level, options
    ):
        """`fn(seed_state, tensors) -> images in [-1, 1]` sampling stage `index`; subclasses."""
        raise NotImplementedError

    def _stage_unet_kwargs(self, index, batch, level, seed_state, tensors):
        """The unet's conditioning while sampling stage `index`: text, condition images,
        and for super-resolution stages the previous stage's output noised to the
        augmentation time `level` (draw 1 of the stage's seed), with the same
        `lowres_noise_times = log_snr(level)` quantity as in training."""
        unet_kwargs = {}
        if tensors["text_embeds"] is not None:
            unet_kwargs["text_embeds"] = tensors["text_embeds"]
            unet_kwargs["text_mask"] = tensors["text_masks"]
        if tensors["cond_images"] is not None:
            unet_kwargs["cond_images"] = tensors["cond_images"]
        if self.unets[index].lowres_cond:
            size = self.image_sizes[index]
            lowres_fn = get_log_snr_fn(self.lowres_noise_schedule)
            lowres = self.normalize_img(resize_image_to(tensors["prev"], size, self.resize_mode))
            aug_times = ops.full((batch,), level, dtype="float32")
            noise = step_normal(ops.shape(lowres), seed_state, 1)
            unet_kwargs["lowres_cond_img"], *_ = q_sample(lowres, aug_times, noise, lowres_fn)
            unet_kwargs["lowres_noise_times"] = lowres_fn(aug_times)
        return unet_kwargs

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
