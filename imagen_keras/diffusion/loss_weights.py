"""Per-sample loss weights of the Gaussian diffusion objective, as functions of log-SNR."""

import numbers

from keras import ops

OBJECTIVES = ("noise", "x_start", "v")


def min_snr_loss_weight(log_snr, objective, gamma=5.0):
    """Min-SNR-gamma loss weight, as imagen-pytorch 2.1.0's `p_losses` applies it.

    With `snr = exp(log_snr)` and `clipped = min(snr, gamma)`, the weight is
    `clipped / snr` for the `"noise"` objective, `clipped` for `"x_start"` and
    `clipped / (snr + 1)` for `"v"`: for every objective this weights the implied
    x-start error by `min(snr, gamma)`. With `gamma=None` nothing is clipped, which is
    what imagen-pytorch does when `min_snr_loss_weight=False` (weights 1, `snr` and
    `snr / (snr + 1)`).

    The `"noise"` weight is computed as `min(gamma / snr, 1)`, equal to the reference's
    `clipped / snr` up to rounding but free of `0 / 0` when `snr` underflows.

    Args:
        log_snr: float tensor (any shape), usually `(batch,)`.
        objective: str. What the network predicts: `"noise"`, `"x_start"` or `"v"`.
        gamma: positive float or `None`. Defaults to `5.0`.

    Returns:
        A float32 tensor with the shape of `log_snr`.

    Raises:
        ValueError: if `objective` is unknown or `gamma` is not a positive number.

    Reference:
    - [Hang et al., "Efficient Diffusion Training via Min-SNR Weighting Strategy",
        2023](https://arxiv.org/abs/2303.09556).
    """
    if objective not in OBJECTIVES:
        raise ValueError(
            f"`objective` must be one of {OBJECTIVES}. Received: objective={objective!r}"
        )
    if gamma is not None and (
        not isinstance(gamma, numbers.Real) or isinstance(gamma, bool) or not gamma > 0
    ):
        raise ValueError(f"`gamma` must be a positive number or None. Received: gamma={gamma!r}")
    log_snr = ops.cast(log_snr, "float32")
    snr = ops.exp(log_snr)
    clipped = snr if gamma is None else ops.minimum(snr, float(gamma))
    if objective == "noise":
        if gamma is None:
            return ops.ones_like(snr)
        return ops.minimum(float(gamma) * ops.exp(-log_snr), 1.0)
    if objective == "x_start":
        return clipped
    return clipped / (snr + 1.0)


def p2_loss_weight(log_snr, gamma=0.5, k=1.0):
    """Perception-prioritized (P2) loss weight `(k + snr) ** -gamma`.

    For the `"noise"` objective. imagen-pytorch's 0.x/1.x releases offered it as
    `p2_loss_weight_gamma` / `p2_loss_weight_k`; 2.1.0 removed it in favour of
    `min_snr_loss_weight`. `gamma=0` gives weight 1.

    Args:
        log_snr: float tensor (any shape), usually `(batch,)`.
        gamma: non-negative float. Defaults to `0.5`.
        k: positive float. Defaults to `1.0`.

    Returns:
        A float32 tensor with the shape of `log_snr`.

    Raises:
        ValueError: if `gamma` is negative or `k` is not positive.

    Reference:
    - [Choi et al., "Perception Prioritized Training of Diffusion Models", 2022](
        https://arxiv.org/abs/2204.00227), eq. 8.
    """
    if not isinstance(gamma, numbers.Real) or isinstance(gamma, bool) or gamma < 0:
        raise ValueError(f"`gamma` must be a non-negative number. Received: gamma={gamma!r}")
    if not isinstance(k, numbers.Real) or isinstance(k, bool) or not k > 0:
        raise ValueError(f"`k` must be a positive number. Received: k={k!r}")
    snr = ops.exp(ops.cast(log_snr, "float32"))
    return ops.power(float(k) + snr, -float(gamma))
