"""Continuous-time noise schedules, expressed as log signal-to-noise ratios.

A schedule maps a time `t` in `[0, 1]` (0 = clean, 1 = pure noise) to
`log_snr(t) = log(alpha(t)**2 / sigma(t)**2)`, with the variance-preserving
`alpha**2 + sigma**2 = 1`. The numerics follow imagen-pytorch 2.1.0
(`alpha_cosine_log_snr`, `beta_linear_log_snr`, `log_snr_to_alpha_sigma`,
`GaussianDiffusionContinuousTimes.get_sampling_timesteps`) and
v-diffusion-jax (Katherine Crowson), which it credits.

Reference:
- [Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models", 2021](
    https://arxiv.org/abs/2102.09672) (cosine schedule).
- [Kingma et al., "Variational Diffusion Models", 2021](
    https://arxiv.org/abs/2107.00630) (continuous time, log-SNR parameterisation).
"""

import math
import numbers

import numpy as np
from keras import ops

NOISE_SCHEDULES = ("cosine", "linear")


def _is_positive_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _as_float32(t):
    return ops.cast(ops.convert_to_tensor(t), "float32")


def cosine_log_snr(t, s=0.008):
    """Log-SNR of the cosine schedule.

    `log_snr(t) = -log(max(cos((t + s) / (1 + s) * pi / 2) ** -2 - 1, 1e-5))`, exactly
    as imagen-pytorch's `alpha_cosine_log_snr`. The clamp caps the log-SNR at
    `-log(1e-5) ~ 11.5`; at `t = 1` float32 rounding of `pi / 2` makes the cosine
    about `-4.4e-8` instead of 0, giving a finite log-SNR of about -33.9.

    Args:
        t: float tensor (any shape) of times in `[0, 1]`.
        s: float. Offset that keeps the noise variance from vanishing at `t = 0`.
            Defaults to `0.008`.

    Returns:
        A float32 tensor with the shape of `t`.

    Reference:
    - [Nichol & Dhariwal, 2021](https://arxiv.org/abs/2102.09672), eq. 17.
    """
    t = _as_float32(t)
    cos = ops.cos((t + s) / (1.0 + s) * (math.pi * 0.5))
    return -ops.log(ops.maximum(ops.power(cos, -2.0) - 1.0, 1e-5))


def linear_log_snr(t):
    """Log-SNR of the continuous-time version of the DDPM linear beta schedule.

    `log_snr(t) = -log(expm1(1e-4 + 10 t**2))`, exactly as imagen-pytorch's
    `beta_linear_log_snr`: about 9.21 at `t = 0` and -10.0 at `t = 1`.

    Args:
        t: float tensor (any shape) of times in `[0, 1]`.

    Returns:
        A float32 tensor with the shape of `t`.

    Reference:
    - [Ho et al., "Denoising Diffusion Probabilistic Models", 2020](
        https://arxiv.org/abs/2006.11239); continuous form from
        [Kingma et al., 2021](https://arxiv.org/abs/2107.00630).
    """
    t = _as_float32(t)
    return -ops.log(ops.expm1(1e-4 + 10.0 * ops.square(t)))


def log_snr_to_alpha_sigma(log_snr):
    """Signal and noise scales of a variance-preserving diffusion.

    `alpha = sqrt(sigmoid(log_snr))`, `sigma = sqrt(sigmoid(-log_snr))`, so that
    `alpha**2 + sigma**2 = 1` and `log(alpha**2 / sigma**2) = log_snr`.

    Args:
        log_snr: float tensor (any shape).

    Returns:
        A tuple `(alpha, sigma)` of tensors with the shape and dtype of `log_snr`.

    Reference:
    - [Kingma et al., "Variational Diffusion Models", 2021](
        https://arxiv.org/abs/2107.00630), eq. 3.
    """
    log_snr = ops.convert_to_tensor(log_snr)
    return ops.sqrt(ops.sigmoid(log_snr)), ops.sqrt(ops.sigmoid(-log_snr))


_LOG_SNR_FNS = {"cosine": cosine_log_snr, "linear": linear_log_snr}


def get_log_snr_fn(name):
    """Look up a log-SNR schedule by name.

    Args:
        name: str. One of `"cosine"` or `"linear"`.

    Returns:
        The schedule function, `cosine_log_snr` or `linear_log_snr`.

    Raises:
        ValueError: if `name` is not a known schedule.
    """
    if not isinstance(name, str) or name not in _LOG_SNR_FNS:
        raise ValueError(f"`name` must be one of {NOISE_SCHEDULES}. Received: name={name!r}")
    return _LOG_SNR_FNS[name]


def default_noise_schedules(num_unets, noise_schedules="cosine"):
    """Per-unet noise schedule names, using imagen-pytorch's defaulting rule.

    A single name becomes a 1-tuple; the tuple is padded to length 2 with
    `"cosine"` and then to `num_unets` with `"linear"`. So the default gives
    `("cosine", "cosine", "linear", ...)`: cosine for the base unet and the first
    super-resolution unet, linear for the later ones.

    Args:
        num_unets: int, at least 1. Number of unets in the cascade.
        noise_schedules: str or a tuple/list of str. Defaults to `"cosine"`.

    Returns:
        A tuple of `num_unets` schedule names.

    Raises:
        ValueError: if `num_unets` is not a positive int, if `noise_schedules` holds
            more names than there are unets, or if a name is not a known schedule.
    """
    if not _is_positive_int(num_unets):
        raise ValueError(f"`num_unets` must be a positive int. Received: num_unets={num_unets!r}")
    names = (noise_schedules,) if isinstance(noise_schedules, str) else tuple(noise_schedules)
    if len(names) > num_unets:
        raise ValueError(
            f"`noise_schedules` has {len(names)} entries for {num_unets} unet(s). "
            f"Received: noise_schedules={noise_schedules!r}"
        )
    for name in names:
        if name not in _LOG_SNR_FNS:
            raise ValueError(
                f"Every entry of `noise_schedules` must be one of {NOISE_SCHEDULES}. "
                f"Received: noise_schedules={noise_schedules!r}"
            )
    names = names + ("cosine",) * max(0, 2 - len(names))
    names = names + ("linear",) * max(0, num_unets - len(names))
    return names[:num_unets]


def sampling_time_pairs(timesteps):
    """Time grid of the ancestral sampler: pairs `(t, t_next)` from 1 down to 0.

    The grid is `linspace(1, 0, timesteps + 1)`, as imagen-pytorch's
    `get_sampling_timesteps`; it is computed in float64 and rounded once to float32,
    so every backend gets identical values.

    Args:
        timesteps: int, at least 1. Number of sampling steps.

    Returns:
        A tuple `(times, times_next)` of float32 tensors of shape `(timesteps,)`;
        `times[0] = 1` and `times_next[-1] = 0`.

    Raises:
        ValueError: if `timesteps` is not a positive int.
    """
    if not _is_positive_int(timesteps):
        raise ValueError(f"`timesteps` must be a positive int. Received: timesteps={timesteps!r}")
    grid = np.linspace(1.0, 0.0, int(timesteps) + 1).astype("float32")
    return (
        ops.convert_to_tensor(grid[:-1], dtype="float32"),
        ops.convert_to_tensor(grid[1:], dtype="float32"),
    )
