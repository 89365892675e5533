"""Loss weights against imagen-pytorch 2.1.0 golden values and closed forms."""

import numpy as np
import pytest
from keras import ops

from imagen_keras.diffusion import cosine_log_snr, min_snr_loss_weight, p2_loss_weight


def to_np(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize("objective", ["noise", "x_start", "v"])
def test_min_snr_loss_weight_matches_reference(golden, objective):
    log_snr = cosine_log_snr(np.array(golden["t"], "float32"))
    weight = to_np(min_snr_loss_weight(log_snr, objective, gamma=5.0))
    assert weight.dtype == np.float32
    np.testing.assert_allclose(weight, golden[f"min_snr_weight_{objective}"], rtol=1e-5, atol=1e-6)


def test_min_snr_loss_weight_without_clipping():
    # gamma=None is imagen-pytorch with min_snr_loss_weight=False.
    log_snr = np.linspace(-8.0, 8.0, 9).astype("float32")
    snr = np.exp(log_snr.astype("float64"))
    np.testing.assert_allclose(to_np(min_snr_loss_weight(log_snr, "noise", None)), 1.0)
    np.testing.assert_allclose(to_np(min_snr_loss_weight(log_snr, "x_start", None)), snr, rtol=1e-5)
    np.testing.assert_allclose(
        to_np(min_snr_loss_weight(log_snr, "v", None)), snr / (snr + 1), rtol=1e-5
    )


def test_min_snr_noise_weight_is_finite_at_extreme_log_snr():
    weight = to_np(min_snr_loss_weight(np.array([-200.0, 200.0], "float32"), "noise"))
    np.testing.assert_allclose(weight, [1.0, 0.0], atol=1e-30)


def test_min_snr_loss_weight_rejects_unknown_objective():
    with pytest.raises(ValueError, match="objective='eps'"):
        min_snr_loss_weight(np.zeros((2,), "float32"), "eps")


def test_min_snr_loss_weight_rejects_bad_gamma():
    with pytest.raises(ValueError, match="gamma=0"):
        min_snr_loss_weight(np.zeros((2,), "float32"), "noise", gamma=0)


def test_p2_loss_weight_closed_form():
    log_snr = np.linspace(-10.0, 10.0, 11).astype("float32")
    snr = np.exp(log_snr.astype("float64"))
    np.testing.assert_allclose(to_np(p2_loss_weight(log_snr)), (1.0 + snr) ** -0.5, rtol=1e-5)
    np.testing.assert_allclose(
        to_np(p2_loss_weight(log_snr, gamma=1.0, k=2.0)), 1.0 / (2.0 + snr), rtol=1e-5
    )
    np.testing.assert_allclose(to_np(p2_loss_weight(log_snr, gamma=0.0)), 1.0)


def test_p2_loss_weight_rejects_negative_gamma():
    with pytest.raises(ValueError, match="gamma=-1"):
        p2_loss_weight(np.zeros((2,), "float32"), gamma=-1)


def test_p2_loss_weight_rejects_bad_k():
    with pytest.raises(ValueError, match="k=0"):
        p2_loss_weight(np.zeros((2,), "float32"), k=0)
