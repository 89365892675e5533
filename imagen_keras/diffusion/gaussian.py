"""Continuous-time Gaussian diffusion: forward process, posterior and reparameterisations.

Images are channels-last, `(batch, height, width, channels)` (any rank works: per-sample
coefficients are padded on the right). Times `t` are a per-sample `(batch,)` tensor or a
scalar. `log_snr_fn` is a schedule such as `cosine_log_snr` / `linear_log_snr`, or its
name. Coefficients are computed in float32 and cast to the images' dtype.

The numerics follow imagen-pytorch 2.1.0's `GaussianDiffusionContinuousTimes`.

Reference:
- [Kingma et al., "Variational Diffusion Models", 2021](https://arxiv.org/abs/2107.00630).
- [Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion Models",
    2022](https://arxiv.org/abs/2202.00512) (v-parameterisation).
"""

from keras import ops

from imagen_keras.diffusion.schedules import get_log_snr_fn, log_snr_to_alpha_sigma


def _log_snr(t, log_snr_fn):
    if isinstance(log_snr_fn, str):
        log_snr_fn = get_log_snr_fn(log_snr_fn)
    return log_snr_fn(ops.cast(t, "float32"))


def _right_pad(coef, x):
    """Reshape a per-sample `(batch,)` coefficient to broadcast against `x`; scalars pass."""
    if len(coef.shape) == 0:
        return coef
    # -1 rather than the static batch size, which is None in a shape-polymorphic trace.
    shape = (-1,) + tuple(coef.shape[1:]) + (1,) * (len(x.shape) - len(coef.shape))
    return ops.reshape(coef, shape)


def _alpha_sigma(x, t, log_snr_fn):
    alpha, sigma = log_snr_to_alpha_sigma(_log_snr(t, log_snr_fn))
    return (
        ops.cast(_right_pad(alpha, x), x.dtype),
        ops.cast(_right_pad(sigma, x), x.dtype),
    )


def q_sample(x_start, t, noise, log_snr_fn):
    """Noise clean images to time `t`: `x_t = alpha(t) x_start + sigma(t) noise`.

    Args:
        x_start: float tensor `(batch, ...)`, clean images.
        t: float tensor `(batch,)` or scalar, times in `[0, 1]`.
        noise: float tensor shaped like `x_start`, standard normal noise.
        log_snr_fn: callable `t -> log_snr`, or a schedule name (`"cosine"`, `"linear"`).

    Returns:
        A tuple `(x_t, log_snr, alpha, sigma)`: `x_t` shaped like `x_start`; `log_snr`
        of shape `(batch,)` in float32 (what the unet is conditioned on); `alpha` and
        `sigma` of shape `(batch, 1, ..., 1)` in the dtype of `x_start`.

    Reference:
    - [Kingma et al., 2021](https://arxiv.org/abs/2107.00630), eq. 1.
    """
    x_start = ops.convert_to_tensor(x_start)
    noise = ops.convert_to_tensor(noise)
    t = ops.broadcast_to(ops.cast(t, "float32"), (ops.shape(x_start)[0],))
    log_snr = _log_snr(t, log_snr_fn)
    alpha, sigma = log_snr_to_alpha_sigma(log_snr)
    alpha = ops.cast(_right_pad(alpha, x_start), x_start.dtype)
    sigma = ops.cast(_right_pad(sigma, x_start), x_start.dtype)
    return alpha * x_start + sigma * noise, log_snr, alpha, sigma


def q_posterior(x_start, x_t, t, t_next, log_snr_fn):
    """Gaussian posterior `q(x_{t_next} | x_t, x_start)` for `t_next < t`.

    With `c = -expm1(log_snr(t) - log_snr(t_next))`:
    `mean = alpha_next (x_t (1 - c) / alpha_t + c x_start)`,
    `variance = sigma_next**2 c`, and the log variance is `log(max(variance, 1e-20))`.
    This is VDM eq. 33 exactly as imagen-pytorch's `q_posterior` computes it.

    Args:
        x_start: float tensor `(batch, ...)`, (predicted) clean images.
        x_t: float tensor shaped like `x_start`, images at time `t`.
        t: float tensor `(batch,)` or scalar, current time.
        t_next: float tensor `(batch,)` or scalar, next (smaller) time.
        log_snr_fn: callable `t -> log_snr`, or a schedule name.

    Returns:
        A tuple `(mean, variance, log_variance_clipped)`; `mean` is shaped like `x_t`,
        the variances like `t` padded to the rank of `x_t`.

    Reference:
    - [Kingma et al., 2021](https://arxiv.org/abs/2107.00630), appendix, eq. 33.
    """
    x_t = ops.convert_to_tensor(x_t)
    x_start = ops.convert_to_tensor(x_start)
    log_snr = _right_pad(_log_snr(t, log_snr_fn), x_t)
    log_snr_next = _right_pad(_log_snr(t_next, log_snr_fn), x_t)
    alpha, _ = log_snr_to_alpha_sigma(log_snr)
    alpha_next, sigma_next = log_snr_to_alpha_sigma(log_snr_next)
    c = -ops.expm1(log_snr - log_snr_next)
    dtype = x_t.dtype
    mean = ops.cast(alpha_next, dtype) * (
        x_t * ops.cast((1.0 - c) / alpha, dtype) + ops.cast(c, dtype) * x_start
    )
    variance = ops.square(sigma_next) * c
    log_variance_clipped = ops.log(ops.maximum(variance, 1e-20))
    return mean, ops.cast(variance, dtype), ops.cast(log_variance_clipped, dtype)


def predict_start_from_noise(x_t, t, noise, log_snr_fn):
    """Clean images from a noise prediction: `(x_t - sigma noise) / max(alpha, 1e-8)`.

    Args:
        x_t: float tensor `(batch, ...)`, images at time `t`.
        t: float tensor `(batch,)` or scalar.
        noise: float tensor shaped like `x_t`, predicted noise (epsilon).
        log_snr_fn: callable `t -> log_snr`, or a schedule name.

    Returns:
        A tensor shaped like `x_t`.

    Reference:
    - [Ho et al., "Denoising Diffusion Probabilistic Models", 2020](
        https://arxiv.org/abs/2006.11239), eq. 15.
    """
    x_t, noise = ops.convert_to_tensor(x_t), ops.convert_to_tensor(noise)
    alpha, sigma = _alpha_sigma(x_t, t, log_snr_fn)
    return (x_t - sigma * noise) / ops.maximum(alpha, 1e-8)


def predict_start_from_v(x_t, t, v, log_snr_fn):
    """Clean images from a v prediction: `alpha x_t - sigma v`.

    Args:
        x_t: float tensor `(batch, ...)`, images at time `t`.
        t: float tensor `(batch,)` or scalar.
        v: float tensor shaped like `x_t`, predicted velocity.
        log_snr_fn: callable `t -> log_snr`, or a schedule name.

    Returns:
        A tensor shaped like `x_t`.

    Reference:
    - [Salimans & Ho, 2022](https://arxiv.org/abs/2202.00512), section 4.
    """
    x_t, v = ops.convert_to_tensor(x_t), ops.convert_to_tensor(v)
    alpha, sigma = _alpha_sigma(x_t, t, log_snr_fn)
    return alpha * x_t - sigma * v


def predict_v(x_start, t, noise, log_snr_fn):
    """The v-objective's target: `alpha noise - sigma x_start`.

    Args:
        x_start: float tensor `(batch, ...)`, clean images.
        t: float tensor `(batch,)` or scalar.
        noise: float tensor shaped like `x_start`, the noise used by `q_sample`.
        log_snr_fn: callable `t -> log_snr`, or a schedule name.

    Returns:
        A tensor shaped like `x_start`.

    Reference:
    - [Salimans & Ho, 2022](https://arxiv.org/abs/2202.00512), section 4.
    """
    x_start, noise = ops.convert_to_tensor(x_start), ops.convert_to_tensor(noise)
    alpha, sigma = _alpha_sigma(x_start, t, log_snr_fn)
    return alpha * noise - sigma * x_start


def predict_noise_from_start(x_t, t, x0, log_snr_fn):
    """Noise implied by a clean-image estimate: `(x_t - alpha x0) / max(sigma, 1e-8)`.

    Not in imagen-pytorch 2.1.0 (it was in its earlier releases); the inverse of
    `predict_start_from_noise`, with the same style of clamp.

    Args:
        x_t: float tensor `(batch, ...)`, images at time `t`.
        t: float tensor `(batch,)` or scalar.
        x0: float tensor shaped like `x_t`, (predicted) clean images.
        log_snr_fn: callable `t -> log_snr`, or a schedule name.

    Returns:
        A tensor shaped like `x_t`.

    Reference:
    - [Ho et al., 2020](https://arxiv.org/abs/2006.11239), eq. 4.
    """
    x_t, x0 = ops.convert_to_tensor(x_t), ops.convert_to_tensor(x0)
    alpha, sigma = _alpha_sigma(x_t, t, log_snr_fn)
    return (x_t - alpha * x0) / ops.maximum(sigma, 1e-8)
