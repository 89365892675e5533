"""Continuous-time Gaussian diffusion against imagen-pytorch 2.1.0 golden values."""

import numpy as np
import pytest
from keras import ops

from imagen_keras.diffusion import (
    cosine_log_snr,
    linear_log_snr,
    predict_noise_from_start,
    predict_start_from_noise,
    predict_start_from_v,
    predict_v,
    q_posterior,
    q_sample,
    sampling_time_pairs,
)

RTOL, ATOL = 1e-5, 1e-6


def to_np(x):
    return ops.convert_to_numpy(x)


def images(seed, shape=(3, 4, 5, 2)):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def test_q_sample_matches_reference_alpha_sigma(golden):
    t = np.array(golden["t"], dtype="float32")
    x_start, noise = images(0, (len(t), 2, 3, 1)), images(1, (len(t), 2, 3, 1))
    x_t, log_snr, alpha, sigma = q_sample(x_start, t, noise, cosine_log_snr)
    assert tuple(x_t.shape) == x_start.shape
    assert tuple(log_snr.shape) == (len(t),)
    assert tuple(alpha.shape) == tuple(sigma.shape) == (len(t), 1, 1, 1)
    np.testing.assert_allclose(to_np(log_snr), golden["cosine_log_snr"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(to_np(alpha).ravel(), golden["cosine_alpha"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(to_np(sigma).ravel(), golden["cosine_sigma"], rtol=RTOL, atol=ATOL)
    a = np.array(golden["cosine_alpha"]).reshape(-1, 1, 1, 1)
    s = np.array(golden["cosine_sigma"]).reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(to_np(x_t), a * x_start + s * noise, rtol=RTOL, atol=1e-5)


def test_q_sample_scalar_time_and_schedule_name():
    x_start, noise = images(0), images(1)
    x_t, log_snr, alpha, _ = q_sample(x_start, 0.3, noise, "linear")
    ref_t, ref_log_snr, _, _ = q_sample(
        x_start, np.full((3,), 0.3, "float32"), noise, linear_log_snr
    )
    assert tuple(log_snr.shape) == (3,) and tuple(alpha.shape) == (3, 1, 1, 1)
    np.testing.assert_allclose(to_np(x_t), to_np(ref_t), atol=1e-6)
    np.testing.assert_allclose(to_np(log_snr), to_np(ref_log_snr), atol=1e-6)


def test_q_posterior_matches_reference(golden):
    for ref in golden["cosine_q_posterior_xstart1_xt0.5"]:
        x_start = np.ones((1, 1, 1, 1), "float32")
        x_t = np.full((1, 1, 1, 1), 0.5, "float32")
        t, t_next = np.array([ref["t"]], "float32"), np.array([ref["t_next"]], "float32")
        mean, var, log_var = q_posterior(x_start, x_t, t, t_next, cosine_log_snr)
        np.testing.assert_allclose(to_np(mean).ravel(), [ref["mean"]], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(to_np(var).ravel(), [ref["var"]], rtol=RTOL, atol=1e-9)
        np.testing.assert_allclose(
            to_np(log_var).ravel(), [ref["log_var_clipped"]], rtol=RTOL, atol=ATOL
        )


def test_q_posterior_batched_times_match_scalar_times():
    times, times_next = sampling_time_pairs(4)
    x_start, x_t = images(0, (4, 3, 3, 2)), images(1, (4, 3, 3, 2))
    mean, var, log_var = q_posterior(x_start, x_t, times, times_next, cosine_log_snr)
    assert tuple(mean.shape) == (4, 3, 3, 2) and tuple(var.shape) == (4, 1, 1, 1)
    for i in range(4):
        m, v, lv = q_posterior(
            x_start[i : i + 1], x_t[i : i + 1], times[i], times_next[i], "cosine"
        )
        np.testing.assert_allclose(to_np(mean)[i : i + 1], to_np(m), atol=1e-6)
        np.testing.assert_allclose(to_np(var)[i].ravel(), to_np(v).ravel(), rtol=1e-6)
        np.testing.assert_allclose(to_np(log_var)[i].ravel(), to_np(lv).ravel(), rtol=1e-6)


def test_q_posterior_clips_log_variance_at_zero_time():
    # t = t_next = 0 gives c = 0, so variance 0 and log variance log(1e-20).
    _, var, log_var = q_posterior(images(0), images(1), 0.0, 0.0, cosine_log_snr)
    np.testing.assert_allclose(to_np(var), 0.0, atol=0)
    np.testing.assert_allclose(to_np(log_var), np.log(1e-20), rtol=1e-6)


def test_q_posterior_is_exact_at_clean_end():
    # From t to t_next = 0 the posterior mean is (almost) x_start: alpha_0 ~ 1, c ~ 1.
    x_start, x_t = images(0), images(1)
    mean, _, _ = q_posterior(x_start, x_t, 0.5, 0.0, cosine_log_snr)
    np.testing.assert_allclose(to_np(mean), x_start, atol=1e-3)


def test_predict_start_from_noise_matches_reference(golden):
    out = predict_start_from_noise(
        np.full((1, 1, 1, 1), 0.3, "float32"),
        np.array([0.4], "float32"),
        np.full((1, 1, 1, 1), -0.2, "float32"),
        cosine_log_snr,
    )
    expected = golden["cosine_predict_start_from_noise(t=.4,xt=.3,eps=-.2)"]
    np.testing.assert_allclose(to_np(out).ravel(), [expected], rtol=RTOL)


def test_predict_start_from_v_matches_reference(golden):
    out = predict_start_from_v(
        np.full((1, 1, 1, 1), 0.3, "float32"),
        np.array([0.4], "float32"),
        np.full((1, 1, 1, 1), -0.2, "float32"),
        cosine_log_snr,
    )
    expected = golden["cosine_predict_start_from_v(t=.4,xt=.3,v=-.2)"]
    np.testing.assert_allclose(to_np(out).ravel(), [expected], rtol=RTOL)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_parameterisations_invert_each_other(schedule):
    x_start, noise = images(0), images(1)
    t = np.array([0.1, 0.5, 0.9], "float32")
    x_t, _, _, _ = q_sample(x_start, t, noise, schedule)
    np.testing.assert_allclose(
        to_np(predict_start_from_noise(x_t, t, noise, schedule)), x_start, atol=2e-4
    )
    np.testing.assert_allclose(
        to_np(predict_noise_from_start(x_t, t, x_start, schedule)), noise, atol=2e-4
    )
    v = predict_v(x_start, t, noise, schedule)
    np.testing.assert_allclose(to_np(predict_start_from_v(x_t, t, v, schedule)), x_start, atol=1e-5)


def test_predict_start_from_noise_clamps_alpha():
    # A log-SNR of -100 gives alpha ~ 2e-22; the division uses max(alpha, 1e-8).
    x_t, noise = images(0), images(1)
    out = predict_start_from_noise(x_t, 0.5, noise, lambda t: ops.full_like(t, -100.0))
    np.testing.assert_allclose(to_np(out), (x_t - noise) / 1e-8, rtol=1e-5)
