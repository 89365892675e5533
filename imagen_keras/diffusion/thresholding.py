"""Keeping predicted clean images in range while sampling: dynamic and static thresholding.

Reference:
- [Saharia et al., "Photorealistic Text-to-Image Diffusion Models with Deep Language
    Understanding" (Imagen), 2022](https://arxiv.org/abs/2205.11487), section 2.3 and
    appendix, figure A.10.
"""

import numbers

from keras import ops


def dynamic_threshold(x_start, percentile=0.95):
    """Imagen's dynamic thresholding of a predicted clean image, per sample.

    `s = quantile(|x_start|, percentile)` over every element of a sample (linear
    interpolation between order statistics, like `torch.quantile` and `numpy.quantile`),
    `s = max(s, 1)`, and the sample becomes `clip(x_start, -s, s) / s`. Samples whose
    quantile is below 1 are thus plainly clipped to `[-1, 1]`; saturated ones are
    rescaled into it. Computed in float32, returned in the dtype of `x_start`.

    Uses `keras.ops.quantile`, which matches `torch.quantile` on every backend and
    compiles (XLA, `tf.function`); on the torch backend it inherits `torch.quantile`'s
    limit of 2**24 elements per sample.

    Args:
        x_start: float tensor `(batch, ...)`.
        percentile: float in `[0, 1]`. Defaults to `0.95` (imagen-pytorch's
            `dynamic_thresholding_percentile`).

    Returns:
        A tensor shaped like `x_start`, with values in `[-1, 1]`.

    Raises:
        ValueError: if `percentile` is not a number in `[0, 1]`.

    Reference:
    - [Saharia et al., 2022](https://arxiv.org/abs/2205.11487), section 2.3.
    """
    if (
        not isinstance(percentile, numbers.Real)
        or isinstance(percentile, bool)
        or not 0.0 <= percentile <= 1.0
    ):
        raise ValueError(
            f"`percentile` must be a number in [0, 1]. Received: percentile={percentile!r}"
        )
    x_start = ops.convert_to_tensor(x_start)
    dtype = x_start.dtype
    x = ops.cast(x_start, "float32")
    flat = ops.reshape(ops.abs(x), (ops.shape(x)[0], -1))
    s = ops.maximum(ops.quantile(flat, float(percentile), axis=-1), 1.0)
    s = ops.reshape(s, (-1,) + (1,) * (len(x.shape) - 1))
    return ops.cast(ops.minimum(ops.maximum(x, -s), s) / s, dtype)


def static_clip(x):
    """Static thresholding: clip a predicted clean image to `[-1, 1]`.

    Args:
        x: float tensor.

    Returns:
        A tensor shaped like `x`.

    Reference:
    - [Saharia et al., 2022](https://arxiv.org/abs/2205.11487), section 2.3.
    """
    return ops.clip(x, -1.0, 1.0)
