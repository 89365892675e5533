"""Elucidated diffusion (EDM): noise levels, preconditioning, loss weight and Heun sampler.

Small separate pieces in the style of NVlabs/edm and k-diffusion: the sampler takes a
denoiser `denoise_fn(x, sigma) -> x0 estimate` and knows nothing about networks. Noise
levels `sigma` are standard deviations of the added noise (`x = x0 + sigma * eps`,
images not rescaled). The numerics and defaults follow imagen-pytorch 2.1.0's
`ElucidatedImagen`.

Reference:
- [Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
    2022](https://arxiv.org/abs/2206.00364).
"""

import math
import numbers

import keras
from keras import ops

from imagen_keras.diffusion.noise import initial_seed_state as _initial_seed_state
from imagen_keras.diffusion.noise import step_normal


def _is_positive_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def karras_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """The EDM sampling noise levels, with a trailing zero.

    `sigma_i = (sigma_max**(1/rho) + i / (N - 1) (sigma_min**(1/rho) -
    sigma_max**(1/rho)))**rho` for `i = 0 .. N - 1`, then `sigma_N = 0`; computed in
    float32 like imagen-pytorch's `sample_schedule` (so `sigma_0` is 79.99998, not 80).
    With `num_steps=1` the schedule is `[sigma_max, 0]`.

    Args:
        num_steps: int, at least 1. Number of sampling steps `N`.
        sigma_min: positive float. Smallest non-zero noise level. Defaults to `0.002`.
        sigma_max: float above `sigma_min`. Largest noise level. Defaults to `80.0`.
        rho: positive float. Curvature; larger spends more steps at low noise.
            Defaults to `7.0`.

    Returns:
        A float32 tensor of shape `(num_steps + 1,)`, decreasing, ending in 0.

    Raises:
        ValueError: if `num_steps` is not a positive int, `sigma_min` is not positive,
            `sigma_max <= sigma_min`, or `rho` is not positive.

    Reference:
    - [Karras et al., 2022](https://arxiv.org/abs/2206.00364), eq. 5.
    """
    if not _is_positive_int(num_steps):
        raise ValueError(f"`num_steps` must be a positive int. Received: num_steps={num_steps!r}")
    if not sigma_min > 0:
        raise ValueError(f"`sigma_min` must be positive. Received: sigma_min={sigma_min!r}")
    if not sigma_max > sigma_min:
        raise ValueError(
            f"`sigma_max` must be larger than `sigma_min` ({sigma_min}). "
            f"Received: sigma_max={sigma_max!r}"
        )
    if not rho > 0:
        raise ValueError(f"`rho` must be positive. Received: rho={rho!r}")
    inv_rho = 1.0 / rho
    max_inv_rho = sigma_max**inv_rho
    steps = ops.arange(num_steps, dtype="float32")
    ramp = steps / float(max(num_steps - 1, 1))
    sigmas = ops.power(max_inv_rho + ramp * (sigma_min**inv_rho - max_inv_rho), float(rho))
    return ops.concatenate([sigmas, ops.zeros((1,), dtype="float32")], axis=0)


def edm_preconditioning(sigma, sigma_data=0.5):
    """EDM preconditioning coefficients: `D(x) = c_skip x + c_out F(c_in x, c_noise)`.

    `c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)`,
    `c_out = sigma sigma_data / sqrt(sigma**2 + sigma_data**2)`,
    `c_in = 1 / sqrt(sigma**2 + sigma_data**2)` and `c_noise = log(sigma) / 4` (with
    `sigma` clamped at 1e-20 inside the log, as imagen-pytorch does; EDM's paper uses
    the same `ln(sigma) / 4`). `c_noise` is what the network is conditioned on.

    Args:
        sigma: float tensor (any shape, usually `(batch,)`) of noise levels. Pad it to
            the images' rank before multiplying images by the coefficients.
        sigma_data: float. Standard deviation of the data. Defaults to `0.5`.

    Returns:
        A tuple `(c_skip, c_out, c_in, c_noise)` of float32 tensors shaped like `sigma`.

    Reference:
    - [Karras et al., 2022](https://arxiv.org/abs/2206.00364), table 1.
    """
    sigma = ops.cast(sigma, "float32")
    total = ops.square(sigma) + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data * ops.rsqrt(total)
    c_in = ops.rsqrt(total)
    c_noise = ops.log(ops.maximum(sigma, 1e-20)) * 0.25
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma, sigma_data=0.5):
    """EDM loss weight `lambda(sigma) = (sigma**2 + sigma_data**2) / (sigma sigma_data)**2`.

    Applied to the squared error of the denoiser output `D` against `x0`; it makes the
    effective network target unit-variance at every noise level.

    Args:
        sigma: float tensor (any shape) of noise levels.
        sigma_data: float. Standard deviation of the data. Defaults to `0.5`.

    Returns:
        A float32 tensor shaped like `sigma`.

    Reference:
    - [Karras et al., 2022](https://arxiv.org/abs/2206.00364), table 1.
    """
    sigma = ops.cast(sigma, "float32")
    return (ops.square(sigma) + sigma_data**2) / ops.square(sigma * sigma_data)


def edm_training_sigmas(shape, P_mean=-1.2, P_std=1.2, seed=None):
    """Training noise levels, log-normal: `sigma = exp(P_mean + P_std * N(0, 1))`.

    Args:
        shape: int (a batch size) or tuple of ints.
        P_mean: float. Mean of `log(sigma)`. Defaults to `-1.2`.
        P_std: float. Standard deviation of `log(sigma)`. Defaults to `1.2`.
        seed: int, `keras.random.SeedGenerator` or `None`, passed to
            `keras.random.normal`. Pass a `SeedGenerator` inside compiled code.

    Returns:
        A float32 tensor of the given shape.

    Reference:
    - [Karras et al., 2022](https://arxiv.org/abs/2206.00364), table 1.
    """
    shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    normal = keras.random.normal(shape, dtype="float32", seed=seed)
    return ops.exp(P_mean + P_std * normal)


def heun_churn_gamma(sigma, num_steps, S_churn=80.0, S_tmin=0.05, S_tmax=50.0):
    """How much noise the stochastic sampler adds at noise level `sigma`.

    `gamma = min(S_churn / num_steps, sqrt(2) - 1)` where `S_tmin <= sigma <= S_tmax`
    (bounds inclusive, as imagen-pytorch's `one_unet_sample`), else 0.

    Args:
        sigma: float tensor (any shape) of noise levels.
        num_steps: int, at least 1. Number of sampling steps `N`.
        S_churn: non-negative float. Total churn. Defaults to `80.0`.
        S_tmin: float. Lowest noise level that gets churn. Defaults to `0.05`.
        S_tmax: float. Highest noise level that gets churn. Defaults to `50.0`.

    Returns:
        A float32 tensor shaped like `sigma`.

    Raises:
        ValueError: if `num_steps` is not a positive int or `S_churn` is negative.

    Reference:
    - [Karras et al., 2022](https://arxiv.org/abs/2206.00364), algorithm 2.
    """
    if not _is_positive_int(num_steps):
        raise ValueError(f"`num_steps` must be a positive int. Received: num_steps={num_steps!r}")
    if not S_churn >= 0:
        raise ValueError(f"`S_churn` must be non-negative. Received: S_churn={S_churn!r}")
    sigma = ops.cast(sigma, "float32")
    gamma = min(S_churn / num_steps, math.sqrt(2.0) - 1.0)
    inside = ops.logical_and(sigma >= S_tmin, sigma <= S_tmax)
    return ops.where(inside, gamma, 0.0)


def heun_sample(
    denoise_fn,
    x_init,
    sigmas,
    *,
    S_churn=80.0,
    S_tmin=0.05,
    S_tmax=50.0,
    S_noise=1.003,
    seed=None,
    skip_steps=0,
    self_conditioning=False,
    inpaint_images=None,
    inpaint_masks=None,
    resample_times=1,
    noise_fn=None,
):
    """EDM's stochastic Heun sampler (2nd order, with churn), as a compilable loop.

    For each step `i` (`N = len(sigmas) - 1` steps):
    `gamma = heun_churn_gamma(sigma_i, N, ...)`, `sigma_hat = sigma_i (1 + gamma)`,
    `x_hat = x + sqrt(sigma_hat**2 - sigma_i**2) S_noise eps`,
    `d = (x_hat - D(x_hat, sigma_hat)) / sigma_hat`,
    `x = x_hat + (sigma_{i+1} - sigma_hat) d` (Euler), and where `sigma_{i+1} != 0` the
    2nd-order correction `d' = (x - D(x, sigma_{i+1})) / sigma_{i+1}`,
    `x = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2`. This is imagen-pytorch's
    `ElucidatedImagen.one_unet_sample`. Like the reference, step `i` owns its noise draw
    whether or not `gamma = 0` (so step `i`'s noise does not depend on the churn
    window); with `S_churn=0` or `S_noise=0` nothing is drawn. The result is not clamped.

    Inpainting (RePaint, Lugmayr et al. 2022) keeps the known region on the sampling
    trajectory: before each denoiser call the known pixels are set to the known image
    plus fresh noise of the current level `sigma_hat`, and each step is repeated
    `resample_times` times, jumping back from `sigma_{i+1}` to `sigma_i` in between by
    adding noise of variance `sigma_i**2 - sigma_{i+1}**2`. (imagen-pytorch adds only the
    churn noise to the known pixels and `(sigma_i - sigma_{i+1}) eps` when jumping back,
    which leaves the known region almost noise-free at high noise levels.)

    Args:
        denoise_fn: callable `(x, sigma) -> x0 estimate`, with `sigma` a float32 tensor
            of shape `(batch,)` and the result shaped like `x`; e.g. a preconditioned,
            guided and thresholded network. With `self_conditioning=True` it is called
            as `(x, sigma, x0_prev)` with the previous estimate (zeros at first).
        x_init: float tensor `(batch, ...)`, the starting point, usually
            `sigmas[0] * N(0, 1)` (plus an init image).
        sigmas: float tensor `(N + 1,)` of decreasing noise levels, e.g.
            `karras_sigmas(N)`.
        S_churn: non-negative float. Defaults to `80.0`; `0` gives the deterministic
            sampler (algorithm 1).
        S_tmin: float. Defaults to `0.05`.
        S_tmax: float. Defaults to `50.0`.
        S_noise: float. Scale of the churn noise. Defaults to `1.003`.
        seed: int, `keras.random.SeedGenerator` or `None`. Draw `k` is the noise that
            the `k`-th draw of `SeedGenerator(seed)` would give (step `i` uses draw `i`
            without inpainting); a passed generator is advanced past the draws used
            (inside a JAX-jitted function, map its state with a `keras.StatelessScope`,
            as for any `keras.random` call). `None` picks a seed from Python's `random`
            (seeded by `keras.utils.set_random_seed`); inside compiled code it becomes a
            constant of the trace, so pass a seed there.
        skip_steps: int, defaults to 0. Start at step `skip_steps` (the churn still
            counts all `N` steps, as the reference's).
        self_conditioning: bool, defaults to `False`. See `denoise_fn`.
        inpaint_images: `None` or a tensor shaped like `x_init`, the known image.
        inpaint_masks: bool tensor broadcastable to `x_init`, True where known.
        resample_times: int >= 1, defaults to 1. RePaint resamplings per step (only
            with inpainting).
        noise_fn: `None` or callable `k -> standard normal noise shaped like x_init`
            for draw number `k` (a traced int); replaces `seed`. With inpainting,
            resampling `r` of step `i` uses draws `3 (i R + r) + {0, 1, 2}` (churn,
            known region, jump back).

    Returns:
        A tensor shaped like `x_init`, the samples at noise level `sigmas[-1]`.

    Raises:
        ValueError: if `sigmas` is not 1-D with at least 2 entries, `skip_steps` is not
            in `[0, N - 1]`, or `seed` is not an int, a `SeedGenerator` or `None`.

    Example:

    ```python
    # Exact denoiser of data ~ N(0, 0.5**2): samples come out with std ~0.5.
    def denoise(x, sigma):
        return 0.25 / (0.25 + ops.reshape(sigma, (-1, 1, 1, 1)) ** 2) * x

    sigmas = karras_sigmas(32)
    x_init = sigmas[0] * keras.random.normal((4, 8, 8, 3), seed=0)
    images = heun_sample(denoise, x_init, sigmas, S_churn=0.0, seed=1)
    ```

    Reference:
    - [Karras et al., 2022](https://arxiv.org/abs/2206.00364), algorithm 2.
    """
    sigmas = ops.cast(sigmas, "float32")
    if len(sigmas.shape) != 1 or sigmas.shape[0] is None or sigmas.shape[0] < 2:
        raise ValueError(
            "`sigmas` must be a 1-D tensor with at least 2 entries. "
            f"Received: sigmas with shape {tuple(sigmas.shape)}"
        )
    num_steps = sigmas.shape[0] - 1
    if not isinstance(skip_steps, numbers.Integral) or not 0 <= skip_steps < num_steps:
        raise ValueError(
            f"`skip_steps` must be an int in [0, {num_steps - 1}]. "
            f"Received: skip_steps={skip_steps!r}"
        )
    if not _is_positive_int(resample_times):
        raise ValueError(
            f"`resample_times` must be a positive int. Received: resample_times={resample_times!r}"
        )
    x_init = ops.convert_to_tensor(x_init)
    shape, dtype = tuple(x_init.shape), x_init.dtype
    inpainting = inpaint_images is not None
    resample_times = resample_times if inpainting else 1
    draws_per_step = 3 if inpainting else 1
    seed_state = None
    if noise_fn is None:
        seed_state = _initial_seed_state(seed)
        noise_fn = lambda k: step_normal(shape, seed_state, k, dtype)
    batch = ops.ones((ops.shape(x_init)[0],), dtype="float32")
    # Without churn every gamma is 0: skip the draws.
    adds_noise = S_churn > 0 and S_noise != 0

    def denoise(x, sigma, x0_prev):
        args = (x, sigma * batch, x0_prev) if self_conditioning else (x, sigma * batch)
        return ops.cast(denoise_fn(*args), dtype)

    def step(i, r, x, x0_prev):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        first_draw = (i * resample_times + r) * draws_per_step
        gamma = heun_churn_gamma(sigma, num_steps, S_churn, S_tmin, S_tmax)
        # Churn: raise the noise level from sigma to sigma_hat. sqrt(sigma_hat**2 - sigma**2)
        # is written so that gamma = 0 gives exactly 0: XLA may fuse a difference of
        # squares into an FMA that rounds below 0, and sqrt would give NaN.
        sigma_hat = sigma * (1.0 + gamma)
        x_hat = x
        if adds_noise:
            noise_scale = sigma * ops.sqrt(gamma * (2.0 + gamma))
            x_hat = x + ops.cast(noise_scale, dtype) * S_noise * noise_fn(first_draw)
        if inpainting:
            known = inpaint_images + ops.cast(sigma_hat, dtype) * noise_fn(first_draw + 1)
            x_hat = ops.where(inpaint_masks, known, x_hat)
        # Euler step from sigma_hat to sigma_next.
        denoised = denoise(x_hat, sigma_hat, x0_prev)
        d = (x_hat - denoised) / ops.cast(sigma_hat, dtype)
        dt = ops.cast(sigma_next - sigma_hat, dtype)
        x_euler = x_hat + dt * d

        # 2nd-order correction, except on a step down to sigma = 0.
        def heun():
            denoised_next = denoise(x_euler, sigma_next, denoised)
            d_next = (x_euler - denoised_next) / ops.cast(sigma_next, dtype)
            return x_hat + 0.5 * dt * (d + d_next), denoised_next

        x_next, x0 = ops.cond(sigma_next != 0.0, heun, lambda: (x_euler, denoised))
        if inpainting:
            # RePaint: jump back up to sigma, except after the last resampling of a step
            # and on the final step.
            jump = ops.sqrt(ops.maximum(ops.square(sigma) - ops.square(sigma_next), 0.0))
            renoised = x_next + ops.cast(jump, dtype) * noise_fn(first_draw + 2)
            redo = ops.logical_and(r < resample_times - 1, sigma_next != 0.0)
            x_next = ops.where(redo, renoised, x_next)
        return x_next, x0

    def body(i, carry):
        if resample_times == 1:
            return step(i, 0, *carry)
        return ops.fori_loop(0, resample_times, lambda r, c: step(i, r, *c), carry)

    x, _ = ops.fori_loop(skip_steps, num_steps, body, (x_init, ops.zeros_like(x_init)))
    if isinstance(seed, keras.random.SeedGenerator) and seed_state is not None:
        seed_step = ops.convert_to_tensor([0, 1], dtype=seed_state.dtype)
        seed.state.assign(seed_state + num_steps * resample_times * draws_per_step * seed_step)
    return x
