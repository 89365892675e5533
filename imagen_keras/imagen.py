"""The Imagen cascade: continuous-time Gaussian diffusion over a chain of unets.

`Imagen` is a `keras.Model` whose forward pass is one stage's diffusion loss, so
`imagen.compile(optimizer, unet_number=n)` then `imagen.fit(dataset)` trains stage `n`
on every backend; `imagen.sample(...)` runs the cascade, each stage's loop compiled.
"""

import functools
import random as py_random
import warnings

import keras
import numpy as np
from keras import ops

from imagen_keras.backend import compile_inference_function, is_concrete
from imagen_keras.diffusion.gaussian import predict_start_from_noise, q_sample
from imagen_keras.diffusion.loss_weights import min_snr_loss_weight, p2_loss_weight
from imagen_keras.diffusion.noise import initial_seed_state, step_normal
from imagen_keras.diffusion.schedules import default_noise_schedules, get_log_snr_fn
from imagen_keras.imagen_sampling import ddim_sample_stage, gaussian_sample_stage
from imagen_keras.layers.sampling import resize_image_to
from imagen_keras.text.t5_widths import DEFAULT_T5_NAME, get_encoded_dim

PRED_OBJECTIVES = ("noise", "x_start", "v")
LOSS_TYPES = ("l1", "l2", "huber")
SAMPLERS = ("ancestral", "ddim")
_INPUT_KEYS = ("images", "texts", "text_embeds", "text_masks", "cond_images")


def _per_unet(value, num_unets, name):
    if isinstance(value, (list, tuple)):
        if len(value) != num_unets:
            raise ValueError(
                f"`{name}` must have one value per unet ({num_unets}). Received: {name}={value!r}"
            )
        return tuple(value)
    return (value,) * num_unets


def _loss_fn(loss_type):
    if loss_type == "l1":
        return lambda pred, target: ops.abs(pred - target)
    if loss_type == "l2":
        return lambda pred, target: ops.square(pred - target)

    def smooth_l1(pred, target):  # torch's smooth_l1_loss with beta 1 (= Huber, delta 1)
        diff = ops.abs(pred - target)
        return ops.where(diff < 1.0, 0.5 * ops.square(diff), diff - 0.5)

    return smooth_l1


@keras.saving.register_keras_serializable(package="imagen_keras")
class PassThroughLoss(keras.losses.Loss):
    """`fit`'s loss for `Imagen`: the model already returns its diffusion loss.

    Going through a `keras.losses.Loss` keeps Keras' loss tracking and its scaling under
    `tf.distribute` strategies.
    """

    def call(self, y_true, y_pred):
        return y_pred


@keras.saving.register_keras_serializable(package="imagen_keras")
class Imagen(keras.Model):
    """Imagen: a cascade of text-conditioned diffusion unets.

    Argument names and defaults are imagen-pytorch 2.1.0's. Each unet is configured for
    its stage in place (`lowres_cond` for every stage after the first, text width and
    channels), never replaced.

    Args:
        unets: a `Unet` (or `NullUnet` as stage 1) or a list of them.
        image_sizes: int or tuple, one output size per unet.
        text_encoder_name: str, defaults to "t5-v1_1-base". Sets the default text width.
        text_embed_dim: int or `None` (the encoder's width).
        channels: int, defaults to 3.
        timesteps: int or per-unet tuple, defaults to 1000. Sampling steps.
        cond_drop_prob: float, defaults to 0.1. Text dropout for classifier-free guidance.
        loss_type: "l1", "l2" (default) or "huber".
        noise_schedules: "cosine" (default), "linear" or per-unet tuple; padded to
            (cosine, cosine, linear, ...) as in the reference.
        pred_objectives: "noise" (default), "x_start", "v" or per-unet tuple.
        random_crop_sizes: `None` or per-unet tuple (first must be `None`): train
            super-resolution stages on random crops.
        lowres_noise_schedule: defaults to "linear". Schedule of the low-res augmentation.
        lowres_sample_noise_level: float, defaults to 0.2. Augmentation level at sampling.
        per_sample_random_aug_noise_level: bool, defaults to `False` (one level per batch).
        condition_on_text: bool, defaults to `True`.
        auto_normalize_img: bool, defaults to `True`: images are in [0, 1].
        dynamic_thresholding: bool or per-unet tuple, defaults to `True`.
        dynamic_thresholding_percentile: float, defaults to 0.95.
        only_train_unet_number: int or `None`. The only stage this model may train.
        resize_mode: str, defaults to "nearest".
        min_snr_loss_weight: bool or per-unet tuple, defaults to `True`.
        min_snr_gamma: float or per-unet tuple, defaults to 5.
        p2_loss_weight_gamma: float or per-unet tuple, defaults to 0 (off). The P2
            weighting `(k + snr) ** -gamma` of Choi et al. 2022 (named in imagen-pytorch's
            README; removed from its 2.1.0 code in favour of min-SNR), applied on top of
            the min-SNR weight; the paper suggests gamma 0.5 to 1.
        p2_loss_weight_k: float, defaults to 1.
        seed: int or `None`. Seed of the training randomness.

    Example:
    ```python
    unet = Unet(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8, max_text_len=8,
                layer_attns=(False, True), layer_cross_attns=(False, True))
    imagen = Imagen(unet, image_sizes=16, text_embed_dim=16, timesteps=10)
    imagen.compile(optimizer="adam")
    imagen.fit({"images": images, "text_embeds": embeds}, epochs=1)
    samples = imagen.sample(text_embeds=embeds[:2], cond_scale=3.0)
    ```

    Reference: Saharia et al., "Photorealistic Text-to-Image Diffusion Models with Deep
    Language Understanding" (2022); Ho et al., "Cascaded Diffusion Models" (2021).
    """

    def __init__(
        self,
        unets,
        *,
        image_sizes,
        text_encoder_name=DEFAULT_T5_NAME,
        text_embed_dim=None,
        channels=3,
        timesteps=1000,
        cond_drop_prob=0.1,
        loss_type="l2",
        noise_schedules="cosine",
        pred_objectives="noise",
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
        min_snr_loss_weight=True,
        min_snr_gamma=5,
        p2_loss_weight_gamma=0.0,
        p2_loss_weight_k=1.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        unets = list(unets) if isinstance(unets, (list, tuple)) else [unets]
        n = len(unets)
        if n == 0:
            raise ValueError("`unets` must hold at least one unet. Received: unets=[]")
        image_sizes = _per_unet(image_sizes, n, "image_sizes")
        if list(image_sizes) != sorted(image_sizes):
            raise ValueError(f"`image_sizes` must increase. Received: image_sizes={image_sizes}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}. Received: {loss_type!r}")
        objectives = _per_unet(pred_objectives, n, "pred_objectives")
        for objective in objectives:
            if objective not in PRED_OBJECTIVES:
                raise ValueError(
                    f"`pred_objectives` entries must be one of {PRED_OBJECTIVES}. "
                    f"Received: pred_objectives={pred_objectives!r}"
                )
        crops = _per_unet(random_crop_sizes, n, "random_crop_sizes")
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
        self.timesteps = _per_unet(timesteps, n, "timesteps")
        self.cond_drop_prob = cond_drop_prob
        self.loss_type = loss_type
        self.noise_schedules = default_noise_schedules(n, noise_schedules)
        self.pred_objectives = objectives
        self.random_crop_sizes = crops
        self.lowres_noise_schedule = lowres_noise_schedule
        self.lowres_sample_noise_level = lowres_sample_noise_level
        self.per_sample_random_aug_noise_level = per_sample_random_aug_noise_level
        self.condition_on_text = condition_on_text
        self.auto_normalize_img = auto_normalize_img
        self.dynamic_thresholding = _per_unet(dynamic_thresholding, n, "dynamic_thresholding")
        self.dynamic_thresholding_percentile = dynamic_thresholding_percentile
        self.only_train_unet_number = only_train_unet_number
        self.resize_mode = resize_mode
        self.min_snr_loss_weight = _per_unet(min_snr_loss_weight, n, "min_snr_loss_weight")
        self.min_snr_gamma = _per_unet(min_snr_gamma, n, "min_snr_gamma")
        self.p2_loss_weight_gamma = _per_unet(p2_loss_weight_gamma, n, "p2_loss_weight_gamma")
        self.p2_loss_weight_k = p2_loss_weight_k
        self.seed = seed
        self._noise_schedules_arg = noise_schedules
        self._pred_objectives_arg = pred_objectives

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
                f"This Imagen may only train unet {self.only_train_unet_number} "
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
        """The diffusion loss of one stage on a batch (imagen-pytorch's `Imagen.forward`).

        `images` may also be a dict with keys "images", "text_embeds", "text_masks",
        "cond_images" (what `fit` passes through from a dataset).
        """
        if isinstance(images, dict):
            unknown = set(images) - set(_INPUT_KEYS)
            if unknown:
                raise ValueError(
                    f"Unknown input keys {sorted(unknown)}; expected some of {_INPUT_KEYS}."
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

        batch = ops.shape(images)[0]
        size = self.image_sizes[index]
        times = keras.random.uniform((batch,), seed=self.seed_generator)
        lowres_cond_img = aug_times = None
        if index > 0:
            low, high = self.input_image_range
            lowres = resize_image_to(images, self.image_sizes[index - 1], self.resize_mode)
            lowres = ops.clip(lowres, low, high)
            lowres_cond_img = ops.clip(resize_image_to(lowres, size, self.resize_mode), low, high)
            if self.per_sample_random_aug_noise_level:
                aug_times = keras.random.uniform((batch,), seed=self.seed_generator)
            else:
                aug = keras.random.uniform((1,), seed=self.seed_generator)
                aug_times = ops.broadcast_to(aug, (batch,))
        images = resize_image_to(images, size, self.resize_mode)

        loss = self._p_losses(
            unet,
            index,
            images,
            times,
            text_embeds,
            text_masks,
            cond_images,
            lowres_cond_img,
            aug_times,
            training,
        )
        if training:
            self.unet_train_steps.assign(
                self.unet_train_steps + ops.one_hot(index, self.num_unets, dtype="int32")
            )
        return loss

    def _p_losses(
        self,
        unet,
        index,
        x_start,
        times,
        text_embeds,
        text_masks,
        cond_images,
        lowres_cond_img,
        aug_times,
        training,
    ):
        log_snr_fn = get_log_snr_fn(self.noise_schedules[index])
        objective = self.pred_objectives[index]
        noise = keras.random.normal(ops.shape(x_start), seed=self.seed_generator)
        x_start = self.normalize_img(x_start)
        if lowres_cond_img is not None:
            lowres_cond_img = self.normalize_img(lowres_cond_img)
        crop = self.random_crop_sizes[index]
        if crop is not None:
            x_start, lowres_cond_img, noise = self._random_crop(
                crop, x_start, lowres_cond_img, noise
            )
        x_noisy, log_snr, alpha, sigma = q_sample(x_start, times, noise, log_snr_fn)

        unet_kwargs = dict(text_embeds=text_embeds, text_mask=text_masks, cond_images=cond_images)
        if lowres_cond_img is not None:
            lowres_fn = get_log_snr_fn(self.lowres_noise_schedule)
            lowres_noise = keras.random.normal(ops.shape(lowres_cond_img), seed=self.seed_generator)
            unet_kwargs["lowres_cond_img"], *_ = q_sample(
                lowres_cond_img, aug_times, lowres_noise, lowres_fn
            )
            unet_kwargs["lowres_noise_times"] = lowres_fn(aug_times)
        if text_embeds is not None:
            unet_kwargs["text_keep_mask"] = self._text_keep_mask(ops.shape(x_noisy)[0])

        if unet.self_cond:
            # Self-conditioning (Chen et al. 2022): half the time, feed the model's own
            # (gradient-stopped) x0 estimate; the other half, zeros.
            first = ops.stop_gradient(unet(x_noisy, log_snr, training=training, **unet_kwargs))
            if objective == "noise":
                estimate = predict_start_from_noise(x_noisy, times, first, log_snr_fn)
            else:
                estimate = first  # the reference feeds the raw prediction for x_start and v
            use = keras.random.uniform((), seed=self.seed_generator) < 0.5
            unet_kwargs["self_cond"] = ops.where(use, estimate, ops.zeros_like(estimate))

        pred = ops.cast(unet(x_noisy, log_snr, training=training, **unet_kwargs), "float32")
        if objective == "noise":
            target = noise
        elif objective == "x_start":
            target = x_start
        else:  # v, Salimans & Ho 2022, appendix D
            target = alpha * noise - sigma * x_start
        losses = ops.mean(_loss_fn(self.loss_type)(pred, target), axis=(1, 2, 3))
        gamma = self.min_snr_gamma[index] if self.min_snr_loss_weight[index] else None
        weights = min_snr_loss_weight(log_snr, objective, gamma=gamma)
        if self.p2_loss_weight_gamma[index] > 0:
            weights = weights * p2_loss_weight(
                log_snr, self.p2_loss_weight_gamma[index], self.p2_loss_weight_k
            )
        return ops.mean(losses * weights)

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
            raise ValueError(
                "`texts=` needs a text encoder, which this Imagen does not have yet; pass "
                "`text_embeds` (and `text_masks`) computed with your T5 encoder."
            )
        if not self.condition_on_text:
            if text_embeds is not None:
                raise ValueError(
                    "This Imagen has condition_on_text=False but `text_embeds` were given."
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
        sampler="ancestral",
        ddim_steps=None,
        ddim_eta=0.0,
    ):
        """Generate images through the cascade (imagen-pytorch's `Imagen.sample`).

        Returns images in [0, 1], channels-last, as a backend tensor (or a list of PIL
        images with `return_pil_images=True`; or a list per stage with
        `return_all_unet_outputs=True`). The same `seed` gives the same images.
        `inpaint_masks` are `(batch, height, width)` bools, True where
        `inpaint_images` is kept.

        Which sampler: `"ancestral"` (the default) is the reference's sampler and gives
        the best quality with many steps (each unet's `timesteps`, typically 1000);
        `"ddim"` with `ddim_eta=0` is deterministic given the initial noise and is meant
        for 25-100 steps (10-40 times fewer unet calls). Both use the same guidance,
        thresholding, self-conditioning, `init_images`, `skip_steps` and inpainting
        (DDIM inpaints without RePaint resampling: `inpaint_resample_times` is ignored).

        Sampler arguments:
            sampler: "ancestral" (default) or "ddim".
            ddim_steps: int, per-unet tuple or `None` (default: each unet's
                `timesteps`). DDIM steps over the continuous schedule; `skip_steps`
                skips the first of these.
            ddim_eta: float >= 0, defaults to 0 (deterministic). 1 gives DDIM the
                ancestral sampler's step variance.

        Reference: Song et al., "Denoising Diffusion Implicit Models" (2021).
        """
        self.build()
        n = self.num_unets
        if sampler not in SAMPLERS:
            raise ValueError(f"`sampler` must be one of {SAMPLERS}. Received: sampler={sampler!r}")
        ddim_steps = _per_unet(ddim_steps, n, "ddim_steps")
        for steps in ddim_steps:
            if steps is not None and (
                isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1
            ):
                raise ValueError(
                    "`ddim_steps` must be a positive int, a per-unet tuple of them or None. "
                    f"Received: ddim_steps={ddim_steps!r}"
                )
        if (
            isinstance(ddim_eta, bool)
            or not isinstance(ddim_eta, (int, float, np.number))
            or ddim_eta < 0
        ):
            raise ValueError(f"`ddim_eta` must be a number >= 0. Received: ddim_eta={ddim_eta!r}")
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
        cond_scales = _per_unet(cond_scale, n, "cond_scale")
        if any(s != 1 for s in cond_scales) and self.cond_drop_prob == 0:
            raise ValueError(
                "Classifier-free guidance (cond_scale != 1) needs a model trained with "
                f"cond_drop_prob > 0. Received: cond_scale={cond_scale}, cond_drop_prob=0"
            )
        # Like the reference, one image (not a per-unet list) initialises every stage.
        if not isinstance(init_images, (list, tuple)):
            init_images = (init_images,) * n
        init_images = _per_unet(init_images, n, "init_images")
        skip_steps = _per_unet(skip_steps, n, "skip_steps")
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
        self._warn_untrained(start_at_unet_number, stop)

        seed = py_random.randint(1, 2**31 - 1) if seed is None else seed
        base_state = initial_seed_state(seed)
        outputs = []
        progbar = keras.utils.Progbar(stop - start_at_unet_number + 1, verbose=int(bool(verbose)))
        for number in range(start_at_unet_number, stop + 1):
            index = number - 1
            unet = self.unets[index]
            if getattr(unet, "is_null", False):
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
                mask = ops.cast(ops.cast(inpaint_masks, "float32")[..., None], "float32")
                tensors["mask"] = ops.cast(resize_image_to(mask, size, "nearest"), "bool")
            ddim = sampler == "ddim"
            key = (
                index,
                int(batch_size),
                float(cond_scales[index]),
                int(skip_steps[index] or 0),
                int(inpaint_resample_times) if inpaint_images is not None and not ddim else 1,
                bool(cfg_remove_parallel_component),
                float(cfg_keep_parallel_frac),
                float(level),
                sampler,
                int(ddim_steps[index] or self.timesteps[index]) if ddim else None,
                float(ddim_eta) if ddim else 0.0,
                tuple(k for k, v in tensors.items() if v is not None),
            )
            if key not in self._sample_fns:
                self._sample_fns[key] = compile_inference_function(
                    self, self._make_stage_fn(*key[:-1])
                )
            img = self._sample_fns[key](stage_state, tensors)
            img = self.unnormalize_img(img)
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
        self,
        index,
        batch,
        cond_scale,
        skip,
        resample,
        remove_parallel,
        keep_frac,
        level,
        sampler="ancestral",
        ddim_steps=None,
        ddim_eta=0.0,
    ):
        unet = self.unets[index]
        size = self.image_sizes[index]
        shape = (batch, size, size, self.channels)
        lowres_fn = get_log_snr_fn(self.lowres_noise_schedule)

        def stage(seed_state, tensors):
            unet_kwargs = {}
            if tensors["text_embeds"] is not None:
                unet_kwargs["text_embeds"] = tensors["text_embeds"]
                unet_kwargs["text_mask"] = tensors["text_masks"]
            if tensors["cond_images"] is not None:
                unet_kwargs["cond_images"] = tensors["cond_images"]
            if unet.lowres_cond:
                lowres = self.normalize_img(
                    resize_image_to(tensors["prev"], size, self.resize_mode)
                )
                aug_times = ops.full((batch,), level, dtype="float32")
                noise = step_normal(ops.shape(lowres), seed_state, 1)
                unet_kwargs["lowres_cond_img"], *_ = q_sample(lowres, aug_times, noise, lowres_fn)
                unet_kwargs["lowres_noise_times"] = lowres_fn(aug_times)
            if sampler == "ddim":
                sample_stage = functools.partial(
                    ddim_sample_stage, eta=ddim_eta, num_steps=ddim_steps
                )
            else:
                sample_stage = gaussian_sample_stage
            return sample_stage(
                unet,
                shape,
                seed_state,
                timesteps=self.timesteps[index],
                noise_schedule=self.noise_schedules[index],
                pred_objective=self.pred_objectives[index],
                use_dynamic_threshold=self.dynamic_thresholding[index],
                dynamic_threshold_percentile=self.dynamic_thresholding_percentile,
                cond_scale=cond_scale,
                remove_parallel_component=remove_parallel,
                keep_parallel_frac=keep_frac,
                skip_steps=skip,
                resample_times=resample,
                unet_kwargs=unet_kwargs,
                init_images=tensors["init"],
                inpaint_images=tensors["inpaint"],
                inpaint_masks=tensors["mask"],
            )

        return stage

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
                stacklevel=3,
            )

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
                "timesteps": list(self.timesteps),
                "cond_drop_prob": self.cond_drop_prob,
                "loss_type": self.loss_type,
                "noise_schedules": list(self.noise_schedules),
                "pred_objectives": list(self.pred_objectives),
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
                "min_snr_loss_weight": list(self.min_snr_loss_weight),
                "min_snr_gamma": list(self.min_snr_gamma),
                "p2_loss_weight_gamma": list(self.p2_loss_weight_gamma),
                "p2_loss_weight_k": self.p2_loss_weight_k,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["unets"] = [keras.saving.deserialize_keras_object(u) for u in config["unets"]]
        return cls(**config)
