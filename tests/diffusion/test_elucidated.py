"""Elucidated diffusion (EDM) against imagen-pytorch 2.1.0 golden values and closed forms."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from imagen_keras.diffusion import (
    edm_loss_weight,
    edm_preconditioning,
    edm_training_sigmas,
    heun_churn_gamma,
    heun_sample,
    karras_sigmas,
)

BACKEND = keras.backend.backend()


def to_np(x):
    return ops.convert_to_numpy(x)


def compiled(fn, jit_compile=True):
    """`fn` compiled the way the backend compiles sampling (torch runs eagerly)."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=jit_compile)
    return fn


def gaussian_denoiser(mu, s):
    """Exact denoiser of data ~ N(mu, s**2) per dimension: E[x0 | x0 + sigma eps = x]."""

    def denoise(x, sigma):
        sigma = ops.reshape(sigma, (-1,) + (1,) * (len(x.shape) - 1))
        return mu + s**2 / (s**2 + ops.square(sigma)) * (x - mu)

    return denoise


def reference_heun(mu, s, x, sigmas, S_churn, S_tmin, S_tmax, S_noise, seed):
    """imagen-pytorch's `one_unet_sample` loop (no inpainting), in float64 NumPy."""

    def denoise(x, sigma):
        return mu + s**2 / (s**2 + sigma**2) * (x - mu)

    sigmas = to_np(sigmas).astype("float64")
    num_steps = len(sigmas) - 1
    gammas = np.where(
        (sigmas >= S_tmin) & (sigmas <= S_tmax), min(S_churn / num_steps, math.sqrt(2) - 1), 0.0
    )
    generator = keras.random.SeedGenerator(seed)
    images = np.asarray(x, "float64")
    for sigma, sigma_next, gamma in zip(sigmas[:-1], sigmas[1:], gammas[:-1], strict=True):
        eps = S_noise * to_np(keras.random.normal(x.shape, seed=generator)).astype("float64")
        sigma_hat = sigma + gamma * sigma
        images_hat = images + math.sqrt(sigma_hat**2 - sigma**2) * eps
        denoised_over_sigma = (images_hat - denoise(images_hat, sigma_hat)) / sigma_hat
        images_next = images_hat + (sigma_next - sigma_hat) * denoised_over_sigma
        if sigma_next != 0:
            prime = (images_next - denoise(images_next, sigma_next)) / sigma_next
            images_next = images_hat + 0.5 * (sigma_next - sigma_hat) * (
                denoised_over_sigma + prime
            )
        images = images_next
    return images


def test_karras_sigmas_match_reference(golden):
    sigmas = to_np(karras_sigmas(8, sigma_min=0.002, sigma_max=80.0, rho=7.0))
    assert sigmas.shape == (9,) and sigmas.dtype == np.float32
    np.testing.assert_allclose(sigmas, golden["edm_sigmas_N8"], rtol=1e-5, atol=1e-7)
    assert sigmas[-1] == 0.0 and np.all(np.diff(sigmas) < 0)


def test_karras_sigmas_single_step():
    np.testing.assert_allclose(to_np(karras_sigmas(1)), [80.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_steps=0), "num_steps=0"),
        (dict(num_steps=8, sigma_min=0.0), "sigma_min=0.0"),
        (dict(num_steps=8, sigma_min=1.0, sigma_max=0.5), "sigma_max=0.5"),
        (dict(num_steps=8, rho=0.0), "rho=0.0"),
    ],
)
def test_karras_sigmas_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        karras_sigmas(**kwargs)


def test_edm_preconditioning_matches_reference(golden):
    ref = golden["edm_precond_sigma1"]
    c_skip, c_out, c_in, c_noise = edm_preconditioning(np.array([1.0], "float32"), sigma_data=0.5)
    np.testing.assert_allclose(to_np(c_skip), [ref["c_skip"]], rtol=1e-6)
    np.testing.assert_allclose(to_np(c_out), [ref["c_out"]], rtol=1e-6)
    np.testing.assert_allclose(to_np(c_in), [ref["c_in"]], rtol=1e-6)
    np.testing.assert_allclose(to_np(c_noise), [ref["c_noise"]], atol=1e-7)
    weight = edm_loss_weight(np.array([1.0], "float32"), sigma_data=0.5)
    np.testing.assert_allclose(to_np(weight), [ref["loss_weight"]], rtol=1e-6)


def test_edm_preconditioning_closed_form():
    sigma = np.array([0.0, 0.002, 0.5, 3.0, 80.0], "float32")
    c_skip, c_out, c_in, c_noise = map(to_np, edm_preconditioning(sigma, sigma_data=0.5))
    s = sigma.astype("float64")
    np.testing.assert_allclose(c_skip, 0.25 / (s**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_out, s * 0.5 / np.sqrt(s**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(s**2 + 0.25), rtol=1e-6)
    # log is clamped at 1e-20, so sigma = 0 stays finite.
    np.testing.assert_allclose(c_noise, np.log(np.maximum(s, 1e-20)) / 4, rtol=1e-6)
    # The preconditioned target has unit variance: lambda * c_out**2 = 1.
    np.testing.assert_allclose(to_np(edm_loss_weight(sigma[1:])) * c_out[1:] ** 2, 1.0, rtol=1e-5)


def test_edm_training_sigmas_are_log_normal():
    sigmas = to_np(edm_training_sigmas(20000, P_mean=-1.2, P_std=1.2, seed=3))
    assert sigmas.shape == (20000,) and np.all(sigmas > 0)
    assert abs(np.log(sigmas).mean() + 1.2) < 0.05
    assert abs(np.log(sigmas).std() - 1.2) < 0.05
    again = to_np(edm_training_sigmas((20000,), P_mean=-1.2, P_std=1.2, seed=3))
    np.testing.assert_array_equal(sigmas, again)


def test_heun_churn_gamma():
    sigmas = karras_sigmas(8)
    gammas = to_np(heun_churn_gamma(sigmas, 8, S_churn=80.0, S_tmin=0.05, S_tmax=50.0))
    s = to_np(sigmas)
    expected = np.where((s >= 0.05) & (s <= 50.0), math.sqrt(2) - 1, 0.0)
    np.testing.assert_allclose(gammas, expected, rtol=1e-6)
    # Bounds are inclusive; small churn is S_churn / N.
    edges = to_np(heun_churn_gamma(np.array([0.05, 50.0, 0.049, 50.1], "float32"), 10, 1.0))
    np.testing.assert_allclose(edges, [0.1, 0.1, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(to_np(heun_churn_gamma(sigmas, 8, S_churn=0.0)), 0.0)


def test_heun_churn_gamma_rejects_bad_num_steps():
    with pytest.raises(ValueError, match="num_steps=0"):
        heun_churn_gamma(1.0, 0)


def test_heun_churn_gamma_rejects_negative_churn():
    with pytest.raises(ValueError, match="S_churn=-1"):
        heun_churn_gamma(1.0, 8, S_churn=-1.0)


@pytest.mark.parametrize("S_churn", [0.0, 80.0])
def test_heun_sample_matches_reference_loop(S_churn):
    mu, s = 0.3, 0.7
    x_init = to_np(keras.random.normal((3, 4, 4, 2), seed=1)) * 80.0
    sigmas = karras_sigmas(12)
    kwargs = dict(S_churn=S_churn, S_tmin=0.05, S_tmax=50.0, S_noise=1.003, seed=7)
    out = to_np(heun_sample(gaussian_denoiser(mu, s), x_init, sigmas, **kwargs))
    expected = reference_heun(mu, s, x_init, sigmas, **kwargs)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_heun_sample_lands_on_a_point_mass():
    target = np.array([0.5, -0.25, 0.75], "float32")
    sigma_shapes = []

    def denoise(x, sigma):
        sigma_shapes.append(tuple(sigma.shape))
        return ops.zeros_like(x) + target

    x_init = keras.random.normal((16, 3), seed=2) * 80.0
    out = to_np(heun_sample(denoise, x_init, karras_sigmas(10), S_churn=40.0, seed=0))
    np.testing.assert_allclose(out, np.broadcast_to(target, out.shape), atol=1e-5)
    # The denoiser gets one noise level per sample.
    assert sigma_shapes and all(shape == (16,) for shape in sigma_shapes)


def test_heun_sample_recovers_gaussian_data():
    # With the exact denoiser of N(mu, s**2) the probability-flow ODE maps
    # N(mu, s**2 + sigma_max**2) onto N(mu, s**2); 64 Heun steps are within 0.4%.
    mu, s = 0.3, 0.7
    x_init = keras.random.normal((4000, 4), seed=3) * math.sqrt(s**2 + 80.0**2) + mu
    out = to_np(heun_sample(gaussian_denoiser(mu, s), x_init, karras_sigmas(64), S_churn=0.0))
    assert abs(out.mean() - mu) < 0.02
    assert abs(out.std() / s - 1.0) < 0.02


def test_heun_sample_seeding():
    mu, s = 0.0, 0.5
    x_init = to_np(keras.random.normal((8, 3), seed=4)) * 80.0
    sigmas = karras_sigmas(6)
    # A SeedGenerator gives the draws of its int seed and advances by one draw per step.
    generator = keras.random.SeedGenerator(11)
    out = to_np(heun_sample(gaussian_denoiser(mu, s), x_init, sigmas, S_churn=40.0, seed=generator))
    expected = reference_heun(mu, s, x_init, sigmas, 40.0, 0.05, 50.0, 1.003, seed=11)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(to_np(generator.state.value), [11, 6])
    other = to_np(heun_sample(gaussian_denoiser(mu, s), x_init, sigmas, S_churn=40.0, seed=12))
    assert np.abs(out - other).max() > 1e-3


def test_heun_sample_compiles():
    mu, s = 0.2, 0.6
    x_init = to_np(keras.random.normal((8, 4, 4, 1), seed=5)) * 80.0
    sigmas = karras_sigmas(6)
    kwargs = dict(S_tmin=0.05, S_tmax=50.0, S_noise=1.003, seed=3)
    # TF's stateless RNG draws other numbers under XLA, so with churn TF is compared as a
    # plain tf.function and XLA is checked on the deterministic sampler.
    cases = [(40.0, False)] + ([(0.0, True)] if BACKEND == "tensorflow" else [])
    for churn, jit_compile in cases:

        def sample(x, churn=churn):
            return heun_sample(gaussian_denoiser(mu, s), x, sigmas, S_churn=churn, **kwargs)

        out = compiled(sample, jit_compile=jit_compile)(ops.convert_to_tensor(x_init))
        expected = reference_heun(mu, s, x_init, sigmas, S_churn=churn, **kwargs)
        np.testing.assert_allclose(to_np(out), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX-only: stateless seed generator under jit")
def test_heun_sample_seed_generator_under_jax_jit():
    import jax

    mu, s = 0.0, 0.5
    x_init = to_np(keras.random.normal((8, 3), seed=4)) * 80.0
    sigmas = karras_sigmas(6)
    generator = keras.random.SeedGenerator(11)

    @jax.jit
    def sample(x, seed_state):
        with keras.StatelessScope(state_mapping=[(generator.state, seed_state)]) as scope:
            out = heun_sample(gaussian_denoiser(mu, s), x, sigmas, S_churn=40.0, seed=generator)
        return out, scope.get_current_value(generator.state)

    out, state = sample(x_init, generator.state.value)
    expected = reference_heun(mu, s, x_init, sigmas, 40.0, 0.05, 50.0, 1.003, seed=11)
    np.testing.assert_allclose(to_np(out), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(state), [11, 6])


def test_heun_sample_rejects_short_sigmas():
    with pytest.raises(ValueError, match="sigmas"):
        heun_sample(lambda x, s: x, np.zeros((2, 3), "float32"), np.array([1.0], "float32"))


def test_heun_sample_rejects_bad_seed():
    with pytest.raises(ValueError, match="seed='abc'"):
        heun_sample(lambda x, s: x, np.zeros((2, 3), "float32"), karras_sigmas(2), seed="abc")
