"""The elucidated (EDM) Imagen cascade: Karras et al.'s preconditioning, training and sampler.

`ElucidatedImagen` shares all the cascade plumbing of `Imagen` (`cascade.py`): unets,
low-resolution conditioning, `compile`/`fit` per stage, guidance, thresholding,
inpainting, serialization. Only the diffusion differs: the denoiser is the
preconditioned network `D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`, trained on
log-normal noise levels with the EDM loss weight, and sampled with Heun's 2nd-order
method with churn over the Karras schedule (32 steps by default instead of 1000).
"""

import keras
import numpy as np
from keras import ops

from imagen_keras.cascade import Cascade
from imagen_keras.cascade_inputs import is_finite_number, per_unet
from imagen_keras.diffusion.elucidated import (
    edm_loss_weight,
    edm_preconditioning,
    edm_training_sigmas,
)
from imagen_keras.diffusion.samplers import karras_schedule, sample_heun
from imagen_keras.generation.stage import FIRST_SAMPLER_DRAW, INITIAL_DRAW
from imagen_keras.text.t5_widths import DEFAULT_T5_NAME

__all__ = ["ElucidatedImagen"]

# Per-unet EDM hyper-parameters, in the reference's order.
EDM_HPARAMS = (
    "num_sample_steps",
    "sigma_min",
    "sigma_max",
    "sigma_data",
    "rho",
    "P_mean",
    "P_std",
    "S_churn",
    "S_tmin",
    "S_tmax",
    "S_noise",
)


def _pad(x):
    return ops.reshape(x, (-1, 1, 1, 1))


@keras.saving.register_keras_serializable(package="imagen_keras")
class ElucidatedImagen(Cascade):
    """Imagen with elucidated diffusion (EDM): fast, high-quality sampling in ~32 steps.

    The constructor is imagen-pytorch 2.1.0's `ElucidatedImagen`: the cascade arguments
    of `Imagen` (minus `timesteps`, `noise_schedules`, `pred_objectives`, `loss_type`
    and the loss weightings, which EDM fixes) plus the EDM hyper-parameters, each a
    scalar or one value per unet.

    Training (`compile(unet_number=n)` + `fit`, as for `Imagen`): for each image a noise
    level `sigma = exp(P_mean + P_std N(0, 1))`, `x = x0 + sigma eps`, and the loss
    `lambda(sigma) |D(x, sigma) - x0|^2` with `lambda = (sigma^2 + sigma_data^2) /
    (sigma sigma_data)^2`. The unet is conditioned on `c_noise = log(sigma) / 4`.

    Sampling (`sample(...)`, same arguments as `Imagen.sample` plus per-unet
    `sigma_min`/`sigma_max` overrides): Heun's method with churn over
    `num_sample_steps` Karras noise levels; the denoised image is guided
    (classifier-free guidance) and dynamically thresholded (or clipped) at every call.

    Difference from imagen-pytorch: super-resolution unets are conditioned on the
    low-res augmentation level as `lowres_noise_times = log_snr(t_aug)` both in
    training and at sampling (`t_aug = lowres_sample_noise_level`). imagen-pytorch
    trains with `log_snr(t_aug)` but samples with the raw level (0.2), a quantity the
    unet never saw in training; see also `heun_sample` for the inpainting noise.

    Args:
        unets: a `Unet` (or `NullUnet` as stage 1) or a list of them.
        image_sizes: int or tuple, one output size per unet.
        text_encoder_name, text_embed_dim, channels, cond_drop_prob, random_crop_sizes,
            resize_mode, lowres_sample_noise_level, per_sample_random_aug_noise_level,
            condition_on_text, auto_normalize_img, dynamic_thresholding,
            dynamic_thresholding_percentile, only_train_unet_number,
            lowres_noise_schedule, seed: as in `Imagen`.
        num_sample_steps: int, defaults to 32. Sampling steps `N`.
        sigma_min: float, defaults to 0.002. Lowest sampling noise level.
        sigma_max: float, defaults to 80. Highest sampling noise level.
        sigma_data: float, defaults to 0.5. Standard deviation of the data.
        rho: float, defaults to 7. Curvature of the Karras schedule.
        P_mean: float, defaults to -1.2. Mean of the training `log(sigma)`.
        P_std: float, defaults to 1.2. Standard deviation of the training `log(sigma)`.
        S_churn: float, defaults to 80. Stochasticity of the sampler (0: deterministic).
        S_tmin: float, defaults to 0.05. Lowest noise level that gets churn.
        S_tmax: float, defaults to 50. Highest noise level that gets churn.
        S_noise: float, defaults to 1.003. Scale of the churn noise.

    Example:
    ```python
    unet = Unet(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8, max_text_len=8,
                layer_attns=(False, True), layer_cross_attns=(False, True))
    imagen = ElucidatedImagen(unet, image_sizes=16, text_embed_dim=16, num_sample_steps=16)
    imagen.compile(optimizer="adam")
    imagen.fit({"images": images, "text_embeds": embeds}, epochs=1)
    samples = imagen.sample(text_embeds=embeds[:2], cond_scale=3.0)
    ```

    Reference: Karras et al., "Elucidating the Design Space of Diffusion-Based
    Generative Models" (2022); Saharia et al., "Photorealistic Text-to-Image Diffusion
    Models with Deep Language Understanding" (2022).
    """

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
        resize_mode="nearest",
        lowres_sample_noise_level=0.2,
        per_sample_random_aug_noise_level=False,
        condition_on_text=True,
        auto_normalize_img=True,
        dynamic_thresholding=True,
        dynamic_thresholding_percentile=0.95,
        only_train_unet_number=None,
        lowres_noise_schedule="linear",
        num_sample_steps=32,
        sigma_min=0.002,
        sigma_max=80,
        sigma_data=0.5,
        rho=7,
        P_mean=-1.2,
        P_std=1.2,
        S_churn=80,
        S_tmin=0.05,
        S_tmax=50,
        S_noise=1.003,
        seed=None,
        **kwargs,
    ):
        n = len(unets) if isinstance(unets, (list, tuple)) else 1
        values = dict(
            num_sample_steps=num_sample_steps,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            sigma_data=sigma_data,
            rho=rho,
            P_mean=P_mean,
            P_std=P_std,
            S_churn=S_churn,
            S_tmin=S_tmin,
            S_tmax=S_tmax,
            S_noise=S_noise,
        )
        hparams = {name: per_unet(values[name], n, name) for name in EDM_HPARAMS}
        self._check_hparams(hparams)
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
        for name in EDM_HPARAMS:
            setattr(self, name, hparams[name])

    @staticmethod
    def _check_hparams(hparams):
        def bad(name, message):
            raise ValueError(f"`{name}` {message}. Received: {name}={hparams[name]!r}")

        for steps in hparams["num_sample_steps"]:
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                bad("num_sample_steps", "must be a positive int (or one per unet)")
        for name in EDM_HPARAMS[1:]:
            for value in hparams[name]:
                if not is_finite_number(value):
                    bad(name, "must be a finite number (for every unet)")
        for name in ("sigma_min", "sigma_data", "rho", "P_std"):
            if any(not v > 0 for v in hparams[name]):
                bad(name, "must be positive (for every unet)")
        for low, high in zip(hparams["sigma_min"], hparams["sigma_max"]):
            if not high > low:
                bad("sigma_max", "must be larger than `sigma_min` (for every unet)")
        if any(not v >= 0 for v in hparams["S_churn"]):
            bad("S_churn", "must be non-negative (for every unet)")

    # ------------------------------------------------------------------ the denoiser

    def _denoise(self, network_fn, x, sigma, index):
        """The preconditioned denoiser `D(x, sigma)` of stage `index` (EDM table 1).

        `network_fn(scaled_x, c_noise)` is the unet call (plain or guided).
        """
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, self.sigma_data[index])
        out = network_fn(_pad(c_in) * x, c_noise)
        return _pad(c_skip) * x + _pad(c_out) * ops.cast(out, "float32")

    # ------------------------------------------------------------------ training

    def _stage_loss(self, unet, index, x_start, unet_kwargs, training):
        batch = ops.shape(x_start)[0]
        sigmas = edm_training_sigmas(
            (batch,), self.P_mean[index], self.P_std[index], seed=self.seed_generator
        )
        noise = keras.random.normal(ops.shape(x_start), seed=self.seed_generator)
        x_noisy = x_start + _pad(sigmas) * noise  # EDM: alpha = 1

        def network(kwargs):
            return lambda x, c_noise: unet(x, c_noise, training=training, **kwargs)

        unet_kwargs = self._self_condition(
            unet, unet_kwargs, lambda: self._denoise(network(unet_kwargs), x_noisy, sigmas, index)
        )
        denoised = self._denoise(network(unet_kwargs), x_noisy, sigmas, index)
        losses = ops.mean(ops.square(denoised - x_start), axis=(1, 2, 3))
        return ops.mean(losses * edm_loss_weight(sigmas, self.sigma_data[index]))

    # ------------------------------------------------------------------ sampling

    def _sampler_settings(self, options):
        """Sampler options of `ElucidatedImagen.sample`: `sigma_min` and `sigma_max`
        (scalar or per unet) override the constructor's for this call."""
        unknown = set(options) - {"sigma_min", "sigma_max"}
        if unknown:
            raise ValueError(
                f"Unknown argument(s) of `ElucidatedImagen.sample`: {sorted(unknown)}. The "
                "sampler options are `sigma_min` and `sigma_max`."
            )
        n = self.num_unets
        sigma_min = per_unet(options.get("sigma_min"), n, "sigma_min")
        sigma_max = per_unet(options.get("sigma_max"), n, "sigma_max")
        settings = []
        for index in range(n):
            low = self.sigma_min[index] if sigma_min[index] is None else sigma_min[index]
            high = self.sigma_max[index] if sigma_max[index] is None else sigma_max[index]
            if (
                not all(isinstance(v, (int, float, np.number)) for v in (low, high))
                or not np.isfinite(high)
                or not 0 < low < high
            ):
                raise ValueError(
                    "`sigma_min` must be positive and below `sigma_max` (both finite). "
                    f"Received: sigma_min={low!r}, sigma_max={high!r} for unet {index + 1}"
                )
            settings.append(
                {
                    "static": ("heun",),
                    "num_steps": self.num_sample_steps[index],
                    "sigma_min": float(low),
                    "sigma_max": float(high),
                }
            )
        return settings

    def _sample_stage(self, index, structure, network, noise, inputs):
        unet = self.unets[index]
        threshold = self._threshold(index)

        def denoise(x, sigma, x0_prev):
            def net(scaled, c_noise):
                return network(scaled, c_noise, x0_prev if unet.self_cond else None)

            return threshold(self._denoise(net, x, sigma, index))

        schedule = karras_schedule(
            inputs["num_steps"], inputs["sigma_min"], inputs["sigma_max"], self.rho[index]
        )
        x = schedule(0) * noise(INITIAL_DRAW)
        if inputs.get("init") is not None:
            x = x + inputs["init"]
        return sample_heun(
            denoise,
            x,
            schedule,
            lambda k: noise(FIRST_SAMPLER_DRAW + k),
            S_churn=self.S_churn[index],
            S_tmin=self.S_tmin[index],
            S_tmax=self.S_tmax[index],
            S_noise=self.S_noise[index],
            start_step=inputs["skip_steps"],
            inpaint_images=inputs.get("inpaint"),
            inpaint_masks=inputs.get("mask"),
            resample_times=structure.resample_times,
        )

    # ------------------------------------------------------------------ config

    def get_config(self):
        config = super().get_config()
        config.update({name: list(getattr(self, name)) for name in EDM_HPARAMS})
        return config
