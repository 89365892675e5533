"""One cascade stage's Gaussian sampling loop, as a single `ops.fori_loop`.

Ancestral sampling over the continuous time grid `linspace(1, 0, T + 1)` (imagen-pytorch's
`p_sample_loop`), with classifier-free guidance, dynamic thresholding,
self-conditioning and RePaint inpainting (Lugmayr et al. 2022). Everything here is pure
`keras.ops` and runs inside one compiled function.
"""

from keras import ops

from imagen_keras.diffusion.gaussian import (
    predict_start_from_noise,
    predict_start_from_v,
    q_posterior,
    q_sample,
)
from imagen_keras.diffusion.noise import step_normal
from imagen_keras.diffusion.schedules import get_log_snr_fn, log_snr_to_alpha_sigma
from imagen_keras.diffusion.thresholding import dynamic_threshold, static_clip

# Draw numbers within one stage: 0 initial noise, 1 low-res augmentation, then 3 per step.
_FIRST_LOOP_DRAW = 2


def q_sample_from_to(x_from, from_t, to_t, noise, log_snr_fn):
    """Re-noise `x_from` from time `from_t` up to the noisier `to_t` (RePaint resampling)."""
    alpha, sigma = log_snr_to_alpha_sigma(log_snr_fn(ops.cast(from_t, "float32")))
    alpha_to, sigma_to = log_snr_to_alpha_sigma(log_snr_fn(ops.cast(to_t, "float32")))
    dtype = x_from.dtype
    pad = (-1,) + (1,) * (len(x_from.shape) - 1)
    scale = ops.reshape(ops.cast(alpha_to / alpha, dtype), pad)
    noise_scale = ops.reshape(ops.cast((sigma_to * alpha - sigma * alpha_to) / alpha, dtype), pad)
    return x_from * scale + noise * noise_scale


def x_start_from_prediction(pred, x_t, t, objective, log_snr_fn):
    if objective == "noise":
        return predict_start_from_noise(x_t, t, pred, log_snr_fn)
    if objective == "v":
        return predict_start_from_v(x_t, t, pred, log_snr_fn)
    return pred


def gaussian_sample_stage(
    unet,
    shape,
    seed_state,
    *,
    timesteps,
    noise_schedule,
    pred_objective,
    use_dynamic_threshold,
    dynamic_threshold_percentile,
    cond_scale,
    remove_parallel_component,
    keep_parallel_frac,
    skip_steps=0,
    resample_times=1,
    unet_kwargs=None,
    init_images=None,
    inpaint_images=None,
    inpaint_masks=None,
):
    """Sample one stage; returns images in the model range [-1, 1], inpainting pasted.

    Args:
        unet: the stage's `Unet`.
        shape: `(batch, size, size, channels)`.
        seed_state: `(2,)` uint32 seed state of this stage (see `diffusion.noise`).
        unet_kwargs: dict of conditioning tensors for the unet (text, low-res, ...).
        init_images: images in [-1, 1] added to the initial noise, or `None`.
        inpaint_images / inpaint_masks: images in [-1, 1] and `(batch, size, size, 1)`
            bool masks (True = keep), or `None`.
        Other arguments as `Imagen.sample`.
    """
    log_snr_fn = get_log_snr_fn(noise_schedule)
    unet_kwargs = unet_kwargs or {}
    batch = shape[0]
    ones = ops.ones((batch,), "float32")
    grid = ops.linspace(1.0, 0.0, timesteps + 1)
    times, times_next = grid[:-1][skip_steps:], grid[1:][skip_steps:]
    num_steps = timesteps - skip_steps
    inpainting = inpaint_images is not None

    img = step_normal(shape, seed_state, 0)
    if init_images is not None:
        img = img + init_images
    x_start = ops.zeros(shape)

    def p_sample(img, x_start, t, t_next, draw):
        self_cond = x_start if unet.self_cond else None
        pred = unet.call_with_cond_scale(
            img,
            log_snr_fn(t * ones),
            cond_scale=cond_scale,
            remove_parallel_component=remove_parallel_component,
            keep_parallel_frac=keep_parallel_frac,
            self_cond=self_cond,
            **unet_kwargs,
        )
        pred = ops.cast(pred, "float32")
        x_start = x_start_from_prediction(pred, img, t * ones, pred_objective, log_snr_fn)
        if use_dynamic_threshold:
            x_start = dynamic_threshold(x_start, dynamic_threshold_percentile)
        else:
            x_start = static_clip(x_start)
        mean, _, log_var = q_posterior(x_start, img, t * ones, t_next * ones, log_snr_fn)
        noise = step_normal(shape, seed_state, draw)
        nonzero = ops.cast(t_next > 0, "float32")
        return mean + nonzero * ops.exp(0.5 * log_var) * noise, x_start

    def step(i, carry):
        img, x_start = carry
        t, t_next = times[i], times_next[i]

        def resample(j, carry):
            img, x_start = carry
            draw = _FIRST_LOOP_DRAW + (i * resample_times + j) * 3
            if inpainting:
                noised, *_ = q_sample(
                    inpaint_images, t * ones, step_normal(shape, seed_state, draw), log_snr_fn
                )
                img = ops.where(inpaint_masks, noised, img)
            img, x_start = p_sample(img, x_start, t, t_next, draw + 1)
            if inpainting:
                # Jump back up to time t except after the last resampling of a step and
                # on the final step (RePaint).
                renoised = q_sample_from_to(
                    img,
                    t_next * ones,
                    t * ones,
                    step_normal(shape, seed_state, draw + 2),
                    log_snr_fn,
                )
                redo = ops.logical_and(j < resample_times - 1, t_next > 0)
                img = ops.where(redo, renoised, img)
            return img, x_start

        if resample_times == 1:
            return resample(0, (img, x_start))
        return ops.fori_loop(0, resample_times, resample, (img, x_start))

    img, _ = ops.fori_loop(0, num_steps, step, (img, x_start))
    img = ops.clip(img, -1.0, 1.0)
    if inpainting:
        img = ops.where(inpaint_masks, inpaint_images, img)
    return img
