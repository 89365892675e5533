"""The Imagen cascade: continuous-time Gaussian diffusion over a chain of unets.

`Imagen` is a `keras.Model` whose forward pass is one stage's diffusion loss, so
`imagen.compile(optimizer, unet_number=n)` then `imagen.fit(dataset)` trains stage `n`
on every backend; `imagen.sample(...)` runs the cascade, each stage's loop compiled.
The plumbing shared with `ElucidatedImagen` lives in `cascade.py`.
"""

import keras
import numpy as np
from keras import ops

from imagen_keras.cascade import Cascade, PassThroughLoss
from imagen_keras.cascade_inputs import check_real, is_int, per_unet
from imagen_keras.diffusion.gaussian import (
    predict_start_from_noise,
    predict_start_from_v,
    q_sample,
)
from imagen_keras.diffusion.loss_weights import min_snr_loss_weight, p2_loss_weight
from imagen_keras.diffusion.samplers import sample_ancestral, sample_ddim, time_schedule
from imagen_keras.diffusion.schedules import default_noise_schedules, get_log_snr_fn
from imagen_keras.generation.stage import FIRST_SAMPLER_DRAW, INITIAL_DRAW
from imagen_keras.text.t5_widths import DEFAULT_T5_NAME

__all__ = ["Imagen", "PassThroughLoss"]

PRED_OBJECTIVES = ("noise", "x_start", "v")
LOSS_TYPES = ("l1", "l2", "huber")
SAMPLERS = ("ancestral", "ddim")


def x_start_from_prediction(pred, x_t, t, objective, log_snr_fn):
    """The clean image a unet's prediction (`objective`: noise, x_start or v) implies."""
    if objective == "noise":
        return predict_start_from_noise(x_t, t, pred, log_snr_fn)
    if objective == "v":
        return predict_start_from_v(x_t, t, pred, log_snr_fn)
    return pred


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
class Imagen(Cascade):
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

    Sampling (`sample(...)`, arguments in `Cascade.sample`) takes these sampler options:
        sampler: "ancestral" (default) or "ddim". Ancestral sampling is the reference's
            and gives the best quality with many steps (each unet's `timesteps`,
            typically 1000); DDIM with `ddim_eta=0` is deterministic given the initial
            noise and meant for 25-100 steps. Both use the same guidance, thresholding,
            self-conditioning, `init_images`, `skip_steps` and inpainting (DDIM
            inpaints without RePaint resampling).
        ddim_steps: int, per-unet tuple or `None` (each unet's `timesteps`).
            `skip_steps` skips the first of these.
        ddim_eta: float >= 0, defaults to 0 (deterministic); 1 gives DDIM the ancestral
            sampler's step variance.

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
    Language Understanding" (2022); Ho et al., "Cascaded Diffusion Models" (2021); Song et
    al., "Denoising Diffusion Implicit Models" (2021).
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
        n = len(unets) if isinstance(unets, (list, tuple)) else 1
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}. Received: {loss_type!r}")
        objectives = per_unet(pred_objectives, n, "pred_objectives")
        for objective in objectives:
            if objective not in PRED_OBJECTIVES:
                raise ValueError(
                    f"`pred_objectives` entries must be one of {PRED_OBJECTIVES}. "
                    f"Received: pred_objectives={pred_objectives!r}"
                )
        super().__init__(
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
            **kwargs,
        )
        self.timesteps = per_unet(timesteps, n, "timesteps")
        for steps in self.timesteps:
            if not is_int(steps) or steps < 1:
                raise ValueError(
                    "`timesteps` must be a positive int (or one per unet). "
                    f"Received: timesteps={timesteps!r}"
                )
        self.loss_type = loss_type
        self.noise_schedules = default_noise_schedules(n, noise_schedules)
        self.pred_objectives = objectives
        self.min_snr_loss_weight = per_unet(min_snr_loss_weight, n, "min_snr_loss_weight")
        self.min_snr_gamma = per_unet(min_snr_gamma, n, "min_snr_gamma")
        self.p2_loss_weight_gamma = per_unet(p2_loss_weight_gamma, n, "p2_loss_weight_gamma")
        self.p2_loss_weight_k = p2_loss_weight_k
        for weighted, gamma in zip(self.min_snr_loss_weight, self.min_snr_gamma):
            if weighted:
                check_real(gamma, "min_snr_gamma", 0.0, low_open=True)
        for gamma in self.p2_loss_weight_gamma:
            check_real(gamma, "p2_loss_weight_gamma", 0.0)
        check_real(p2_loss_weight_k, "p2_loss_weight_k", 0.0, low_open=True)

    # ------------------------------------------------------------------ training

    def _stage_loss(self, unet, index, x_start, unet_kwargs, training):
        log_snr_fn = get_log_snr_fn(self.noise_schedules[index])
        objective = self.pred_objectives[index]
        batch = ops.shape(x_start)[0]
        times = keras.random.uniform((batch,), seed=self.seed_generator)
        noise = keras.random.normal(ops.shape(x_start), seed=self.seed_generator)
        x_noisy, log_snr, alpha, sigma = q_sample(x_start, times, noise, log_snr_fn)

        def estimate():
            first = unet(x_noisy, log_snr, training=training, **unet_kwargs)
            if objective == "noise":
                return predict_start_from_noise(x_noisy, times, first, log_snr_fn)
            return first  # the reference feeds the raw prediction for x_start and v

        unet_kwargs = self._self_condition(unet, unet_kwargs, estimate)
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

    # ------------------------------------------------------------------ sampling

    def _sampler_settings(self, options):
        """Sampler options of `Imagen.sample` (see the class docstring):
        `sampler="ancestral"|"ddim"`, `ddim_steps`, `ddim_eta`."""
        unknown = set(options) - {"sampler", "ddim_steps", "ddim_eta"}
        if unknown:
            raise ValueError(
                f"Unknown argument(s) of `Imagen.sample`: {sorted(unknown)}. The sampler "
                "options are `sampler`, `ddim_steps` and `ddim_eta`."
            )
        sampler = options.get("sampler", "ancestral")
        if sampler not in SAMPLERS:
            raise ValueError(f"`sampler` must be one of {SAMPLERS}. Received: sampler={sampler!r}")
        ddim_steps = per_unet(options.get("ddim_steps"), self.num_unets, "ddim_steps")
        for steps in ddim_steps:
            if steps is not None and (not is_int(steps) or steps < 1):
                raise ValueError(
                    "`ddim_steps` must be a positive int, a per-unet tuple of them or None. "
                    f"Received: ddim_steps={options.get('ddim_steps')!r}"
                )
        eta = options.get("ddim_eta", 0.0)
        if isinstance(eta, bool) or not isinstance(eta, (int, float, np.number)) or not eta >= 0:
            raise ValueError(f"`ddim_eta` must be a number >= 0. Received: ddim_eta={eta!r}")
        if not np.isfinite(eta):
            raise ValueError(f"`ddim_eta` must be finite. Received: ddim_eta={eta!r}")
        settings = []
        for index in range(self.num_unets):
            if sampler == "ddim":
                steps = int(ddim_steps[index] or self.timesteps[index])
                settings.append({"static": ("ddim", float(eta)), "num_steps": steps})
            else:
                settings.append({"static": ("ancestral",), "num_steps": self.timesteps[index]})
        return settings

    def _sample_stage(self, index, structure, network, noise, inputs):
        unet = self.unets[index]
        log_snr_fn = get_log_snr_fn(self.noise_schedules[index])
        objective = self.pred_objectives[index]
        threshold = self._threshold(index)

        def denoise(x, t, x0_prev):
            pred = network(x, log_snr_fn(t), x0_prev if unet.self_cond else None)
            pred = ops.cast(pred, "float32")
            return threshold(x_start_from_prediction(pred, x, t, objective, log_snr_fn))

        x = noise(INITIAL_DRAW)
        if inputs.get("init") is not None:
            x = x + inputs["init"]
        kwargs = dict(
            log_snr_fn=log_snr_fn,
            start_step=inputs["skip_steps"],
            inpaint_images=inputs.get("inpaint"),
            inpaint_masks=inputs.get("mask"),
            resample_times=structure.resample_times,
        )
        schedule = time_schedule(inputs["num_steps"])
        sampler_noise = lambda k: noise(FIRST_SAMPLER_DRAW + k)  # noqa: E731
        if structure.sampler[0] == "ddim":
            kwargs["resample_times"] = 1
            return sample_ddim(
                denoise, x, schedule, sampler_noise, eta=structure.sampler[1], **kwargs
            )
        return sample_ancestral(denoise, x, schedule, sampler_noise, **kwargs)

    # ------------------------------------------------------------------ config

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "timesteps": list(self.timesteps),
                "loss_type": self.loss_type,
                "noise_schedules": list(self.noise_schedules),
                "pred_objectives": list(self.pred_objectives),
                "min_snr_loss_weight": list(self.min_snr_loss_weight),
                "min_snr_gamma": list(self.min_snr_gamma),
                "p2_loss_weight_gamma": list(self.p2_loss_weight_gamma),
                "p2_loss_weight_k": self.p2_loss_weight_k,
            }
        )
        return config
