"""One cascade stage's Gaussian sampling loop, as a single `ops.fori_loop`.

Two samplers share the unet call, guidance, thresholding and self-conditioning:
- `gaussian_sample_stage`: ancestral sampling over the continuous time grid
  `linspace(1, 0, T + 1)` (imagen-pytorch's `p_sample_loop`), with RePaint inpainting
  (Lugmayr et al. 2022).
- `ddim_sample_stage`: DDIM (Song et al. 2021) over `linspace(1, 0, num_steps + 1)`,
  deterministic at `eta = 0`.

Everything here is pure `keras.ops` and runs inside one compiled function.
"""

import numbers

from keras import ops

from imagen_keras.diffusion.gaussian import (
    predict_noise_from_start,
    predict_start_from_noise,
    predict_start_from_v,
    q_posterior,
    q_sample,
)
from imagen_keras.diffusion.noise import step_normal
from imagen_keras.diffusion.schedules import (
    get_log_snr_fn,
    log_snr_to_alpha_sigma,
    sampling_time_pairs,
)
from imagen_keras.diffusion.thresholding import dynamic_threshold, static_clip

# Draw numbers within one stage: 0 initial noise, 1 low-res augmentation, then 3 per step
# (per resampling for the ancestral sampler): known-region noise, step noise, re-noising.
_FIRST_LOOP_DRAW = 2
_DRAWS_PER_STEP = 3


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


def _x_start_predictor(
    unet,
    batch,
    log_snr_fn,
    *,
    pred_objective,
    use_dynamic_threshold,
    dynamic_threshold_percentile,
    cond_scale,
    remove_parallel_component,
    keep_parallel_frac,
    unet_kwargs,
):
    """`predict(img, x_start_prev, t)`: the guided, thresholded clean-image estimate at `t`."""
    ones = ops.ones((batch,), "float32")

    def predict(img, x_start_prev, t):
        pred = unet.call_with_cond_scale(
            img,
            log_snr_fn(t * ones),
            cond_scale=cond_scale,
            remove_parallel_component=remove_parallel_component,
            keep_parallel_frac=keep_parallel_frac,
            self_cond=x_start_prev if unet.self_cond else None,
            **unet_kwargs,
        )
        pred = ops.cast(pred, "float32")
        x_start = x_start_from_prediction(pred, img, t * ones, pred_objective, log_snr_fn)
        if use_dynamic_threshold:
            return dynamic_threshold(x_start, dynamic_threshold_percentile)
        return static_clip(x_start)

    return predict


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

    predict = _x_start_predictor(
        unet,
        batch,
        log_snr_fn,
        pred_objective=pred_objective,
        use_dynamic_threshold=use_dynamic_threshold,
        dynamic_threshold_percentile=dynamic_threshold_percentile,
        cond_scale=cond_scale,
        remove_parallel_component=remove_parallel_component,
        keep_parallel_frac=keep_parallel_frac,
        unet_kwargs=unet_kwargs,
    )

    def p_sample(img, x_start, t, t_next, draw):
        x_start = predict(img, x_start, t)
        mean, _, log_var = q_posterior(x_start, img, t * ones, t_next * ones, log_snr_fn)
        noise = step_normal(shape, seed_state, draw)
        nonzero = ops.cast(t_next > 0, "float32")
        return mean + nonzero * ops.exp(0.5 * log_var) * noise, x_start

    def step(i, carry):
        img, x_start = carry
        t, t_next = times[i], times_next[i]

        def resample(j, carry):
            img, x_start = carry
            draw = _FIRST_LOOP_DRAW + (i * resample_times + j) * _DRAWS_PER_STEP
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


def ddim_sample_stage(
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
    eta=0.0,
    num_steps=None,
):
    """Sample one stage with DDIM; returns images in [-1, 1], inpainting pasted.

    Over the grid `linspace(1, 0, num_steps + 1)` of the continuous schedule, each step
    predicts `x0` (guided and thresholded exactly as the ancestral sampler), recomputes
    `eps = (x_t - alpha_t x0) / sigma_t` from the thresholded `x0`, and moves to

        x_next = alpha_next x0 + sqrt(sigma_next**2 - sigma_eta**2) eps + sigma_eta z,
        sigma_eta = eta * (sigma_next / sigma_t) * sqrt(1 - alpha_t**2 / alpha_next**2),

    (DDIM eq. 12 and 16, with `alpha = sqrt(alpha_bar)`); `sigma_eta**2` is computed as
    the ancestral posterior variance `sigma_next**2 * (1 - snr_t / snr_next)`, which it
    equals. `eta = 0` is deterministic; `eta = 1` has the ancestral sampler's variance.
    The last step (`t_next = 0`) returns `x0`.

    Inpainting replaces the known region with the known image noised to each step's time
    before the prediction, and pastes the known image at the end; DDIM takes no RePaint
    resampling, so `resample_times` is ignored.

    Args:
        eta: float >= 0, defaults to 0 (deterministic DDIM).
        num_steps: int >= 1 or `None` (then `timesteps`). Number of DDIM steps.
        skip_steps: int, the first `skip_steps` of the `num_steps` are skipped.
        Other arguments as `gaussian_sample_stage`.

    Reference:
    - [Song et al., "Denoising Diffusion Implicit Models", 2021](
        https://arxiv.org/abs/2010.02502), eq. 12 and 16.
    """
    num_steps = timesteps if num_steps is None else num_steps
    if not isinstance(num_steps, numbers.Integral) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive int. Received: num_steps={num_steps!r}")
    skip_steps = skip_steps or 0
    if not 0 <= skip_steps < num_steps:
        raise ValueError(
            f"`skip_steps` must be in [0, num_steps - 1] = [0, {num_steps - 1}]. "
            f"Received: skip_steps={skip_steps!r}"
        )
    if not isinstance(eta, numbers.Real) or isinstance(eta, bool) or eta < 0:
        raise ValueError(f"`eta` must be a number >= 0. Received: eta={eta!r}")
    log_snr_fn = get_log_snr_fn(noise_schedule)
    unet_kwargs = unet_kwargs or {}
    batch = shape[0]
    ones = ops.ones((batch,), "float32")
    times, times_next = sampling_time_pairs(num_steps)
    times, times_next = times[skip_steps:], times_next[skip_steps:]
    inpainting = inpaint_images is not None
    predict = _x_start_predictor(
        unet,
        batch,
        log_snr_fn,
        pred_objective=pred_objective,
        use_dynamic_threshold=use_dynamic_threshold,
        dynamic_threshold_percentile=dynamic_threshold_percentile,
        cond_scale=cond_scale,
        remove_parallel_component=remove_parallel_component,
        keep_parallel_frac=keep_parallel_frac,
        unet_kwargs=unet_kwargs,
    )

    img = step_normal(shape, seed_state, 0)
    if init_images is not None:
        img = img + init_images

    def step(i, carry):
        img, x_start = carry
        t, t_next = times[i], times_next[i]
        draw = _FIRST_LOOP_DRAW + i * _DRAWS_PER_STEP
        if inpainting:
            noise = step_normal(shape, seed_state, draw)
            noised, *_ = q_sample(inpaint_images, t * ones, noise, log_snr_fn)
            img = ops.where(inpaint_masks, noised, img)
        x_start = predict(img, x_start, t)
        eps = predict_noise_from_start(img, t * ones, x_start, log_snr_fn)
        log_snr, log_snr_next = log_snr_fn(t), log_snr_fn(t_next)
        alpha_next, sigma_next = log_snr_to_alpha_sigma(log_snr_next)
        x_next = alpha_next * x_start
        if eta > 0:
            # eq. 16 as (sigma_next / sigma_t)**2 (1 - alpha_t**2 / alpha_next**2), stably.
            var_eta = eta**2 * ops.square(sigma_next) * -ops.expm1(log_snr - log_snr_next)
            var_eta = ops.minimum(var_eta, ops.square(sigma_next))  # eta > 1
            noise = step_normal(shape, seed_state, draw + 1)
            x_next = x_next + ops.sqrt(var_eta) * noise
            x_next = x_next + ops.sqrt(ops.square(sigma_next) - var_eta) * eps
        else:
            x_next = x_next + sigma_next * eps
        return ops.where(t_next > 0, x_next, x_start), x_start

    img, _ = ops.fori_loop(0, num_steps - skip_steps, step, (img, ops.zeros(shape)))
    img = ops.clip(img, -1.0, 1.0)
    if inpainting:
        img = ops.where(inpaint_masks, inpaint_images, img)
    return img
