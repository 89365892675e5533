"""Noise schedules against imagen-pytorch 2.1.0 golden values."""

import numpy as np
import pytest
from keras import ops

from imagen_keras.diffusion import (
    cosine_log_snr,
    default_noise_schedules,
    get_log_snr_fn,
    linear_log_snr,
    log_snr_to_alpha_sigma,
    sampling_time_pairs,
)

RTOL, ATOL = 1e-5, 1e-6


def to_np(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize("name, fn", [("cosine", cosine_log_snr), ("linear", linear_log_snr)])
def test_log_snr_alpha_sigma_match_reference(golden, name, fn):
    t = np.array(golden["t"], dtype="float32")
    log_snr = fn(t)
    alpha, sigma = log_snr_to_alpha_sigma(log_snr)
    assert to_np(log_snr).dtype == np.float32
    # cosine at t=1 is about -33.89, fixed by float32 rounding of pi/2: relative tolerance.
    np.testing.assert_allclose(to_np(log_snr), golden[f"{name}_log_snr"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(to_np(alpha), golden[f"{name}_alpha"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(to_np(sigma), golden[f"{name}_sigma"], rtol=RTOL, atol=ATOL)


def test_alpha_sigma_are_variance_preserving():
    log_snr = np.linspace(-20.0, 20.0, 41).astype("float32")
    alpha, sigma = log_snr_to_alpha_sigma(log_snr)
    alpha, sigma = to_np(alpha), to_np(sigma)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
    np.testing.assert_allclose(np.log(alpha**2 / sigma**2), log_snr, rtol=1e-4, atol=1e-4)


def test_cosine_log_snr_is_clamped_at_low_noise():
    # cos(...)**-2 - 1 is clamped at 1e-5, so log-SNR never exceeds -log(1e-5).
    log_snr = to_np(cosine_log_snr(np.array([0.0], "float32"), s=0.0))
    np.testing.assert_allclose(log_snr, [-np.log(1e-5)], rtol=RTOL)


def test_lowres_sample_noise_level(golden):
    ref = golden["lowres_sample_noise_level_0.2"]
    log_snr = linear_log_snr(np.array([0.2], "float32"))
    alpha, sigma = log_snr_to_alpha_sigma(log_snr)
    np.testing.assert_allclose(to_np(log_snr), [ref["log_snr"]], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(to_np(alpha), [ref["alpha"]], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(to_np(sigma), [ref["sigma"]], rtol=RTOL, atol=ATOL)


def test_get_log_snr_fn():
    assert get_log_snr_fn("cosine") is cosine_log_snr
    assert get_log_snr_fn("linear") is linear_log_snr


def test_get_log_snr_fn_rejects_unknown_name():
    with pytest.raises(ValueError, match="name='sigmoid'"):
        get_log_snr_fn("sigmoid")


@pytest.mark.parametrize(
    "num_unets, schedules, expected",
    [
        (1, "cosine", ("cosine",)),
        (2, "cosine", ("cosine", "cosine")),
        (3, "cosine", ("cosine", "cosine", "linear")),
        (4, "linear", ("linear", "cosine", "linear", "linear")),
        (3, ("linear", "linear"), ("linear", "linear", "linear")),
        (3, ["cosine", "linear", "cosine"], ("cosine", "linear", "cosine")),
    ],
)
def test_default_noise_schedules(num_unets, schedules, expected):
    assert default_noise_schedules(num_unets, schedules) == expected


def test_default_noise_schedules_rejects_bad_num_unets():
    with pytest.raises(ValueError, match="num_unets=0"):
        default_noise_schedules(0)


def test_default_noise_schedules_rejects_too_many_names():
    with pytest.raises(ValueError, match="noise_schedules"):
        default_noise_schedules(1, ("cosine", "linear"))


def test_default_noise_schedules_rejects_unknown_name():
    with pytest.raises(ValueError, match="'karras'"):
        default_noise_schedules(2, ("cosine", "karras"))


def test_sampling_time_pairs_match_reference(golden):
    times, times_next = sampling_time_pairs(4)
    grid = np.array(golden["sampling_grid_T4"])
    assert to_np(times).dtype == np.float32 and to_np(times_next).dtype == np.float32
    np.testing.assert_allclose(to_np(times), grid[:, 0], atol=1e-7)
    np.testing.assert_allclose(to_np(times_next), grid[:, 1], atol=1e-7)


def test_sampling_time_pairs_long_grid():
    times, times_next = sampling_time_pairs(1000)
    times, times_next = to_np(times), to_np(times_next)
    assert times.shape == times_next.shape == (1000,)
    assert times[0] == 1.0 and times_next[-1] == 0.0
    np.testing.assert_array_equal(times[1:], times_next[:-1])
    assert np.all(np.diff(times) < 0)


def test_sampling_time_pairs_rejects_bad_timesteps():
    with pytest.raises(ValueError, match="timesteps=0"):
        sampling_time_pairs(0)
