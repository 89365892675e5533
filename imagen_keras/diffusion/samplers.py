"""Samplers with one signature: ancestral (Gaussian posterior), DDIM and EDM's Heun.

In the spirit of k-diffusion's `sample_*` functions, every sampler is

    sampler(denoise, x, schedule, noise, *, start_step=0, inpaint_images=None,
            inpaint_masks=None, resample_times=1, **its_own_settings) -> x

- `denoise(x, level, x0_prev) -> x0`: the clean-image estimate at noise `level` (a
  `(batch,)` tensor: a time in [0, 1] for the Gaussian samplers, a noise standard
  deviation for Heun), already guided and thresholded. `x0_prev` is the previous
  estimate (zeros at first), for self-conditioning; ignore it otherwise.
- `x`: the starting point (noise, plus an init image).
- `schedule`: the noise levels `level(0) > ... > level(N)`, a 1-D tensor of `N + 1`
  entries or a `Schedule` (whose step count may be a tensor, so changing it does not
  retrace a compiled sampler).
- `noise(k)`: standard normal noise shaped like `x` for draw number `k` (a traced int).
  Step `i`, resampling `r` uses draws `d (i R + r) + {0, 1, ..}` with `d` draws per step
  (1 for Heun without inpainting, else 3) and `R = resample_times`.
- RePaint inpainting (Lugmayr et al. 2022) is the same wrapper for all: before each step
  the known region is replaced by the known image noised to the step's level; each step
  is repeated `resample_times` times, jumping back up one level in between. The
  samplers know nothing about networks, guidance or cascades.

The samplers return the final `x` unclipped; pasting the known region is the caller's.
"""

import math

from keras import ops

from imagen_keras.diffusion.gaussian import (
    predict_noise_from_start,
    q_posterior,
    q_sample,
)
from imagen_keras.diffusion.schedules import log_snr_to_alpha_sigma


class Schedule:
    """Noise levels of a sampler: `schedule(i)` for `i = 0 .. num_steps`.

    Args:
        level_fn: callable `i -> level` (a float32 scalar tensor) for an int or int32
            tensor `i`.
        num_steps: int or int32 scalar tensor `N`; `level_fn(N)` is the final level.
    """

    def __init__(self, level_fn, num_steps):
        self.level_fn = level_fn
        self.num_steps = num_steps

    def __call__(self, i):
        return self.level_fn(i)


def as_schedule(schedule):
    """A `Schedule` from a `Schedule` or a 1-D tensor of `N + 1` decreasing levels."""
    if isinstance(schedule, Schedule):
        return schedule
    levels = ops.cast(ops.convert_to_tensor(schedule), "float32")
    if len(levels.shape) != 1 or levels.shape[0] is None or levels.shape[0] < 2:
        raise ValueError(
            "`schedule` must be a 1-D tensor with at least 2 entries (or a `Schedule`). "
            f"Received: a tensor of shape {tuple(levels.shape)}"
        )
    return Schedule(lambda i: ops.take(levels, i), levels.shape[0] - 1)


def time_schedule(num_steps):
    """The Gaussian samplers' time grid `linspace(1, 0, N + 1)`, as `(N - i) / N`.

    Equal to imagen-pytorch's `get_sampling_timesteps` grid (both are the correctly
    rounded float32 of `(N - i) / N`); `num_steps` may be a tensor.
    """
    n = ops.cast(num_steps, "float32")
    return Schedule(lambda i: (n - ops.cast(i, "float32")) / n, num_steps)


def karras_schedule(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """EDM's noise levels (eq. 5) with a trailing zero, for a step count that may be a
    tensor: `sigma_i = (sigma_max**(1/rho) + i / (N - 1) (sigma_min**(1/rho) -
    sigma_max**(1/rho)))**rho` for `i < N`, `sigma_N = 0`. Same values as
    `karras_sigmas`; `sigma_min` and `sigma_max` may be tensors too.

    Reference:
    - [Karras et al., 2022](https://arxiv.org/abs/2206.00364), eq. 5.
    """
    inv_rho = 1.0 / rho
    max_inv_rho = ops.power(ops.cast(sigma_max, "float32"), inv_rho)
    min_inv_rho = ops.power(ops.cast(sigma_min, "float32"), inv_rho)
    denominator = ops.cast(ops.maximum(num_steps - 1, 1), "float32")

    def level(i):
        ramp = ops.cast(i, "float32") / denominator
        sigma = ops.power(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), float(rho))
        return ops.where(i < num_steps, sigma, 0.0)

    return Schedule(level, num_steps)


def _batch_of(x, level):
    return level * ops.ones((ops.shape(x)[0],), dtype="float32")


def _loop(step, x, schedule, start_step, resample_times):
    """Run `step(i, r, x, x0) -> (x, x0)` for steps `start_step .. N - 1`, each
    `resample_times` times; `x0` starts at zeros."""

    def body(i, carry):
        if resample_times == 1:
            return step(i, 0, *carry)
        return ops.fori_loop(0, resample_times, lambda r, c: step(i, r, *c), carry)

    x = ops.convert_to_tensor(x)
    x, _ = ops.fori_loop(start_step, schedule.num_steps, body, (x, ops.zeros_like(x)))
    return x


def _check_resample_times(resample_times, inpainting):
    if isinstance(resample_times, bool) or not isinstance(resample_times, int):
        raise ValueError(
            f"`resample_times` must be a positive int. Received: resample_times={resample_times!r}"
        )
    if resample_times < 1:
        raise ValueError(
            f"`resample_times` must be a positive int. Received: resample_times={resample_times!r}"
        )
    return resample_times if inpainting else 1


def q_sample_from_to(x_from, from_t, to_t, noise, log_snr_fn):
    """Re-noise `x_from` from time `from_t` up to the noisier `to_t` (RePaint's jump)."""
    alpha, sigma = log_snr_to_alpha_sigma(log_snr_fn(ops.cast(from_t, "float32")))
    alpha_to, sigma_to = log_snr_to_alpha_sigma(log_snr_fn(ops.cast(to_t, "float32")))
    dtype = x_from.dtype
    pad = (-1,) + (1,) * (len(x_from.shape) - 1)
    scale = ops.reshape(ops.cast(alpha_to / alpha, dtype), pad)
    noise_scale = ops.reshape(ops.cast((sigma_to * alpha - sigma * alpha_to) / alpha, dtype), pad)
    return x_from * scale + noise * noise_scale


def sample_ancestral(
    denoise,
    x,
    schedule,
    noise,
    *,
    log_snr_fn,
    start_step=0,
    inpaint_images=None,
    inpaint_masks=None,
    resample_times=1,
):
    """Ancestral sampling: draw `x_{t_next}` from the Gaussian posterior
    `q(x_{t_next} | x_t, x0 = denoise(x_t))` at every step (imagen-pytorch's
    `p_sample_loop`); no noise is added on the step down to `t = 0`.

    Args:
        denoise, x, schedule, noise, start_step, inpaint_images, inpaint_masks,
            resample_times: see the module docstring. `schedule` holds times from 1 to 0.
        log_snr_fn: the noise schedule, `t -> log_snr`.

    Reference:
    - [Ho et al., "Denoising Diffusion Probabilistic Models", 2020](
        https://arxiv.org/abs/2006.11239), algorithm 2.
    """
    schedule = as_schedule(schedule)
    inpainting = inpaint_images is not None
    resample_times = _check_resample_times(resample_times, inpainting)

    def step(i, r, x, x0):
        t, t_next = _batch_of(x, schedule(i)), _batch_of(x, schedule(i + 1))
        draw = 3 * (i * resample_times + r)
        if inpainting:
            known, *_ = q_sample(inpaint_images, t, noise(draw), log_snr_fn)
            x = ops.where(inpaint_masks, known, x)
        x0 = denoise(x, t, x0)
        mean, _, log_var = q_posterior(x0, x, t, t_next, log_snr_fn)
        last = schedule(i + 1) <= 0.0
        x = ops.where(last, mean, mean + ops.exp(0.5 * log_var) * noise(draw + 1))
        if inpainting:
            jump = q_sample_from_to(x, t_next, t, noise(draw + 2), log_snr_fn)
            x = ops.where(ops.logical_and(r < resample_times - 1, ops.logical_not(last)), jump, x)
        return x, x0

    return _loop(step, x, schedule, start_step, resample_times)


def sample_ddim(
    denoise,
    x,
    schedule,
    noise,
    *,
    log_snr_fn,
    eta=0.0,
    start_step=0,
    inpaint_images=None,
    inpaint_masks=None,
    resample_times=1,
):
    """DDIM: each step predicts `x0`, recomputes `eps = (x_t - alpha_t x0) / sigma_t`
    from the (thresholded) `x0` and moves to

        x_next = alpha_next x0 + sqrt(sigma_next**2 - sigma_eta**2) eps + sigma_eta z,
        sigma_eta**2 = eta**2 sigma_next**2 (1 - snr_t / snr_next)

    (eq. 12 and 16 with `alpha = sqrt(alpha_bar)`; `sigma_eta**2` is the ancestral
    posterior variance times `eta**2`). `eta = 0` is deterministic, `eta = 1` has the
    ancestral sampler's variance. The step down to `t = 0` returns `x0`. Inpainting
    replaces the known region before each step; DDIM takes no RePaint resampling.

    Args:
        eta: float >= 0, defaults to 0.
        log_snr_fn: the noise schedule, `t -> log_snr`.
        Others: see the module docstring.

    Reference:
    - [Song et al., "Denoising Diffusion Implicit Models", 2021](
        https://arxiv.org/abs/2010.02502), eq. 12 and 16.
    """
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
        raise ValueError(f"`eta` must be a number >= 0. Received: eta={eta!r}")
    schedule = as_schedule(schedule)
    inpainting = inpaint_images is not None
    _check_resample_times(resample_times, inpainting)

    def step(i, r, x, x0):
        t_level, t_next_level = schedule(i), schedule(i + 1)
        t = _batch_of(x, t_level)
        draw = 3 * i
        if inpainting:
            known, *_ = q_sample(inpaint_images, t, noise(draw), log_snr_fn)
            x = ops.where(inpaint_masks, known, x)
        x0 = denoise(x, t, x0)
        eps = predict_noise_from_start(x, t, x0, log_snr_fn)
        log_snr, log_snr_next = log_snr_fn(t_level), log_snr_fn(t_next_level)
        alpha_next, sigma_next = log_snr_to_alpha_sigma(log_snr_next)
        x_next = alpha_next * x0
        if eta > 0:
            # eq. 16 as (sigma_next / sigma_t)**2 (1 - alpha_t**2 / alpha_next**2), stably.
            var_eta = eta**2 * ops.square(sigma_next) * -ops.expm1(log_snr - log_snr_next)
            var_eta = ops.minimum(var_eta, ops.square(sigma_next))  # eta > 1
            x_next = x_next + ops.sqrt(var_eta) * noise(draw + 1)
            x_next = x_next + ops.sqrt(ops.square(sigma_next) - var_eta) * eps
        else:
            x_next = x_next + sigma_next * eps
        return ops.where(t_next_level > 0, x_next, x0), x0

    return _loop(step, x, schedule, start_step, 1)


def sample_heun(
    denoise,
    x,
    schedule,
    noise,
    *,
    S_churn=80.0,
    S_tmin=0.05,
    S_tmax=50.0,
    S_noise=1.003,
    start_step=0,
    inpaint_images=None,
    inpaint_masks=None,
    resample_times=1,
):
    """EDM's stochastic sampler (algorithm 2): Heun's 2nd-order method with churn.

    For step `i` of `N`: `gamma = min(S_churn / N, sqrt(2) - 1)` inside
    `[S_tmin, S_tmax]` (else 0); `sigma_hat = sigma_i (1 + gamma)`; `x_hat = x +
    sqrt(sigma_hat**2 - sigma_i**2) S_noise eps`; the Euler step
    `x = x_hat + (sigma_{i+1} - sigma_hat) d` with `d = (x_hat - D(x_hat)) / sigma_hat`;
    and, unless `sigma_{i+1} = 0`, the correction with the average of `d` and
    `d' = (x - D(x)) / sigma_{i+1}`. This is imagen-pytorch's `one_unet_sample`; like it,
    step `i` owns its noise draw whether or not `gamma = 0`; with `S_churn = 0` or
    `S_noise = 0` nothing is drawn. `N` may be a tensor (see `karras_schedule`).

    With inpainting the known pixels get the known image plus noise of level
    `sigma_hat` before each denoiser call, and a resampled step jumps back from
    `sigma_{i+1}` to `sigma_i` with noise of variance `sigma_i**2 - sigma_{i+1}**2`
    (imagen-pytorch adds only the churn noise to the known pixels and
    `(sigma_i - sigma_{i+1}) eps` when jumping back).

    Args:
        S_churn: float >= 0, defaults to 80 (0: the deterministic algorithm 1).
        S_tmin: float, defaults to 0.05. Lowest level that gets churn.
        S_tmax: float, defaults to 50. Highest level that gets churn.
        S_noise: float, defaults to 1.003.
        Others: see the module docstring; `schedule` holds noise levels ending in 0.

    Example:

    ```python
    # Exact denoiser of data ~ N(0, 0.5**2): samples come out with std ~0.5.
    def denoise(x, sigma, x0_prev):
        return 0.25 / (0.25 + ops.reshape(sigma, (-1, 1, 1, 1)) ** 2) * x

    seeds = seeds_to_int32(range(4))
    noise = lambda k: per_sample_normal(seeds, (4, 8, 8, 3), k)
    sigmas = karras_sigmas(32)
    images = sample_heun(denoise, sigmas[0] * noise(1000), sigmas, noise, S_churn=0.0)
    ```

    Reference:
    - [Karras et al., 2022](https://arxiv.org/abs/2206.00364), algorithm 2.
    """
    if not S_churn >= 0:
        raise ValueError(f"`S_churn` must be non-negative. Received: S_churn={S_churn!r}")
    schedule = as_schedule(schedule)
    inpainting = inpaint_images is not None
    resample_times = _check_resample_times(resample_times, inpainting)
    draws_per_step = 3 if inpainting else 1
    adds_noise = S_churn > 0 and S_noise != 0
    x = ops.convert_to_tensor(x)
    dtype = x.dtype
    gamma_max = ops.minimum(S_churn / ops.cast(schedule.num_steps, "float32"), math.sqrt(2) - 1)

    def step(i, r, x, x0_prev):
        sigma, sigma_next = schedule(i), schedule(i + 1)
        draw = (i * resample_times + r) * draws_per_step
        inside = ops.logical_and(sigma >= S_tmin, sigma <= S_tmax)
        gamma = ops.where(inside, gamma_max, 0.0)
        # Churn: raise the noise level from sigma to sigma_hat. sqrt(sigma_hat**2 - sigma**2)
        # is written so that gamma = 0 gives exactly 0 (a fused difference of squares can
        # round below 0, and sqrt would give NaN).
        sigma_hat = sigma * (1.0 + gamma)
        x_hat = x
        if adds_noise:
            scale = ops.cast(sigma * ops.sqrt(gamma * (2.0 + gamma)) * S_noise, dtype)
            x_hat = x + scale * noise(draw)
        if inpainting:
            known = inpaint_images + ops.cast(sigma_hat, dtype) * noise(draw + 1)
            x_hat = ops.where(inpaint_masks, known, x_hat)
        # Euler step from sigma_hat to sigma_next.
        denoised = ops.cast(denoise(x_hat, _batch_of(x, sigma_hat), x0_prev), dtype)
        d = (x_hat - denoised) / ops.cast(sigma_hat, dtype)
        dt = ops.cast(sigma_next - sigma_hat, dtype)
        x_euler = x_hat + dt * d

        # 2nd-order correction, except on a step down to sigma = 0.
        def heun():
            denoised_next = ops.cast(denoise(x_euler, _batch_of(x, sigma_next), denoised), dtype)
            d_next = (x_euler - denoised_next) / ops.cast(sigma_next, dtype)
            return x_hat + 0.5 * dt * (d + d_next), denoised_next

        x_next, x0 = ops.cond(sigma_next != 0.0, heun, lambda: (x_euler, denoised))
        if inpainting:
            # RePaint: jump back up to sigma, except after the last resampling and step.
            jump = ops.sqrt(ops.maximum(ops.square(sigma) - ops.square(sigma_next), 0.0))
            renoised = x_next + ops.cast(jump, dtype) * noise(draw + 2)
            redo = ops.logical_and(r < resample_times - 1, sigma_next != 0.0)
            x_next = ops.where(redo, renoised, x_next)
        return x_next, x0

    return _loop(step, x, schedule, start_step, resample_times)
