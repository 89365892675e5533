"""Elucidated diffusion (EDM): noise levels, preconditioning, loss weight and Heun sampler.

Small separate pieces in the style of NVlabs/edm and k-diffusion (the Heun sampler is
`diffusion.samplers.sample_heun`). Noise
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
