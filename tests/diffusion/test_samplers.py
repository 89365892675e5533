"""The three samplers through one signature, on exact (analytic) denoisers, and the
per-sample noise they draw."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from imagen_keras.diffusion import karras_sigmas
from imagen_keras.diffusion.noise import per_sample_normal, seeds_to_int32
from imagen_keras.diffusion.samplers import (
    Schedule,
    karras_schedule,
    sample_ancestral,
    sample_ddim,
    sample_heun,
    time_schedule,
)
from imagen_keras.diffusion.schedules import (
    cosine_log_snr,
    log_snr_to_alpha_sigma,
    sampling_time_pairs,
)

BACKEND = keras.backend.backend()
SHAPE = (256, 2, 2, 1)


def to_np(x):
    return ops.convert_to_numpy(x)


def seeded_noise(shape, seed=0):
    seeds = seeds_to_int32(seed * 10_000 + np.arange(shape[0]))
    return lambda k: per_sample_normal(seeds, shape, k)


def compiled(fn):
    """`fn` compiled the way the backend compiles sampling (torch runs eagerly)."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    return fn


# ------------------------------------------------------------------ noise


def numpy_per_sample_normal(seeds, shape, draw):
    """`per_sample_normal` in NumPy uint32 arithmetic: the backends must give these bits."""

    def hash32(x):
        x = x.astype(np.uint64) & 0xFFFFFFFF
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        x ^= x >> 16
        return x

    n = int(np.prod(shape[1:]))
    seeds = np.asarray(seeds, np.int64) & 0xFFFFFFFF
    draw_key = hash32(np.array((draw * 0x9E3779B9 + 0x51ED27) & 0xFFFFFFFF))
    key = hash32(hash32(seeds) ^ draw_key)[:, None]
    counter = np.arange(2 * n, dtype=np.uint64)[None, :]
    bits = hash32(hash32((counter + key) & 0xFFFFFFFF) ^ key)
    uniform = ((bits >> 8).astype(np.float64) + 0.5) / 2**24
    normal = np.sqrt(-2 * np.log(uniform[:, :n])) * np.cos(2 * np.pi * uniform[:, n:])
    return normal.reshape(shape)


def test_per_sample_normal_bits_are_the_same_on_every_backend():
    seeds = [0, 7, 2**31 - 1, 2**40 + 5, -3]
    out = to_np(per_sample_normal(seeds_to_int32(seeds), (5, 3, 4, 2), 1_048_579))
    np.testing.assert_allclose(
        out, numpy_per_sample_normal(seeds, (5, 3, 4, 2), 1_048_579), atol=2e-5
    )


def test_per_sample_normal_statistics_and_independence():
    seeds = seeds_to_int32(np.arange(64))
    z = to_np(per_sample_normal(seeds, (64, 16, 16, 3), 0))
    flat = z.ravel()
    assert abs(flat.mean()) < 0.01 and abs(flat.std() - 1) < 0.01
    assert abs((flat**4).mean() - 3.0) < 0.1  # Gaussian kurtosis
    assert abs(np.mean(np.abs(flat) > 1.96) - 0.05) < 0.005
    # Neighbouring elements, neighbouring seeds and neighbouring draws are uncorrelated.
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.01
    assert abs(np.corrcoef(z[:-1].ravel(), z[1:].ravel())[0, 1]) < 0.01
    other_draw = to_np(per_sample_normal(seeds, (64, 16, 16, 3), 1)).ravel()
    assert abs(np.corrcoef(flat, other_draw)[0, 1]) < 0.01


def test_per_sample_normal_does_not_depend_on_the_batch():
    batch = to_np(per_sample_normal(seeds_to_int32([5, 6, 7]), (3, 4, 4, 3), 2))
    alone = to_np(per_sample_normal(seeds_to_int32([6]), (1, 4, 4, 3), 2))
    np.testing.assert_array_equal(batch[1], alone[0])
    assert np.abs(batch[0] - batch[1]).max() > 0.5


# ------------------------------------------------------------------ schedules


def test_time_schedule_equals_the_reference_grid():
    times, times_next = sampling_time_pairs(7)
    schedule = time_schedule(7)
    grid = np.array([float(to_np(schedule(i))) for i in range(8)], "float32")
    np.testing.assert_array_equal(grid[:-1], to_np(times))
    np.testing.assert_array_equal(grid[1:], to_np(times_next))


def test_karras_schedule_equals_karras_sigmas():
    sigmas = to_np(karras_sigmas(9, 0.01, 40.0, 5.0))
    schedule = karras_schedule(ops.convert_to_tensor(9, "int32"), 0.01, 40.0, 5.0)
    levels = np.array([float(to_np(schedule(i))) for i in range(10)], "float32")
    np.testing.assert_allclose(levels, sigmas, rtol=1e-5)
    assert levels[-1] == 0.0


# ------------------------------------------------------------------ Gaussian samplers


def gaussian_data_denoiser(mu, s):
    """The exact x0 estimate E[x0 | x_t] for data ~ N(mu, s**2) per dimension, from the
    exact noise prediction `sigma (x_t - alpha mu) / (alpha**2 s**2 + sigma**2)`; `s = 0`
    is a point mass at `mu`. A plain function: no network, no unet."""

    def denoise(x, t, x0_prev):
        alpha, sigma = log_snr_to_alpha_sigma(ops.reshape(cosine_log_snr(t), (-1, 1, 1, 1)))
        eps = sigma * (x - alpha * mu) / (ops.square(alpha * s) + ops.square(sigma))
        return ops.clip((x - sigma * eps) / alpha, -1.0, 1.0)

    return denoise


def run_gaussian(sampler, denoise, steps, seed=0, **kwargs):
    noise = seeded_noise(SHAPE, seed)
    x = noise(10**6) + kwargs.pop("init_images", 0.0)
    fn = sample_ddim if sampler == "ddim" else sample_ancestral
    return to_np(fn(denoise, x, time_schedule(steps), noise, log_snr_fn=cosine_log_snr, **kwargs))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_lands_exactly_on_a_point_mass_from_any_noise(eta):
    for seed in (0, 1):
        out = run_gaussian("ddim", gaussian_data_denoiser(0.3, 0.0), 10, seed=seed, eta=eta)
        np.testing.assert_allclose(out, 0.3, atol=1e-4)


def test_ddim_and_ancestral_match_gaussian_data_and_ddim_converges():
    # Narrow enough that clipping to [-1, 1] is negligible (4.5 standard deviations).
    mu, s = 0.1, 0.2
    denoise = gaussian_data_denoiser(mu, s)
    ddim_50 = run_gaussian("ddim", denoise, 50)
    ddim_400 = run_gaussian("ddim", denoise, 400)
    ancestral = run_gaussian("ancestral", denoise, 500)
    for out, std_tol in ((ancestral, 0.05), (ddim_50, 0.15), (ddim_400, 0.05)):
        assert abs(out.mean() - mu) < 0.02
        assert abs(out.std() / s - 1.0) < std_tol
    # From the same initial noise z, deterministic DDIM follows the probability flow ODE,
    # whose solution for Gaussian data is x(t) = alpha mu + sqrt(alpha^2 s^2 + sigma^2) z.
    z = to_np(seeded_noise(SHAPE)(10**6))
    alpha0, sigma0 = (float(to_np(v)) for v in log_snr_to_alpha_sigma(cosine_log_snr(0.0)))
    exact = alpha0 * mu + np.sqrt((alpha0 * s) ** 2 + sigma0**2) * z
    error_50, error_400 = np.abs(ddim_50 - exact).mean(), np.abs(ddim_400 - exact).mean()
    assert error_50 < 0.02 and error_400 < 0.005 and error_400 < error_50 / 3


def test_gaussian_inpainting_pulls_the_known_region_to_the_known_image():
    # Data ~ N(0.1, 0.2**2) per pixel; pixel row 0 is known to be -0.5. The samplers return
    # the last x0 estimate (pasting is the caller's): for known pixels it is computed from
    # the known image noised to the last level, so it sits well below the data mean, while
    # free pixels keep the data's distribution.
    known = np.full(SHAPE, -0.5, "float32")
    masks = np.zeros(SHAPE, bool)
    masks[:, 0] = True
    denoise = gaussian_data_denoiser(0.1, 0.2)
    inpaint = dict(inpaint_images=ops.convert_to_tensor(known), inpaint_masks=masks)
    for sampler in ("ddim", "ancestral"):
        plain = run_gaussian(sampler, denoise, 20)
        out = run_gaussian(sampler, denoise, 20, **inpaint)
        assert out[:, 0].mean() < -0.15 < 0.0 < plain[:, 0].mean()
        assert abs(out[:, 1].mean() - 0.1) < 0.03
    # RePaint resampling (ancestral only) changes the trajectory.
    resampled = run_gaussian("ancestral", denoise, 20, resample_times=2, **inpaint)
    assert np.abs(resampled - out).max() > 1e-3


def test_init_images_and_start_step_start_from_the_init_image():
    # DDIM (eta 0) started late from an init image plus little noise stays near it.
    init = np.full(SHAPE, -0.4, "float32")
    denoise = gaussian_data_denoiser(0.1, 0.2)
    late = run_gaussian("ddim", denoise, 10, init_images=init, start_step=9)
    early = run_gaussian("ddim", denoise, 10, init_images=init, start_step=0)
    assert late.mean() < -0.1 and early.mean() > late.mean() + 0.15


def test_ancestral_step_count_as_a_tensor_compiles_once():
    denoise = gaussian_data_denoiser(0.1, 0.2)
    noise = seeded_noise(SHAPE)
    traces = []

    def run(x, steps):
        traces.append(1)
        return sample_ancestral(denoise, x, time_schedule(steps), noise, log_snr_fn=cosine_log_snr)

    fn = compiled(run)
    x = noise(10**6)
    for steps in (8, 12):
        out = to_np(fn(x, ops.convert_to_tensor(steps, "int32")))
        eager = run_gaussian("ancestral", denoise, steps)
        np.testing.assert_allclose(out, eager, atol=1e-4)
    if BACKEND != "torch":
        assert len(traces) == 1


def test_sampler_argument_errors():
    denoise = gaussian_data_denoiser(0.0, 0.0)
    x = np.zeros(SHAPE, "float32")
    with pytest.raises(ValueError, match="eta=-1"):
        sample_ddim(
            denoise, x, time_schedule(4), seeded_noise(SHAPE), log_snr_fn=cosine_log_snr, eta=-1.0
        )
    with pytest.raises(ValueError, match="schedule"):
        sample_heun(denoise, x, np.array([1.0], "float32"), seeded_noise(SHAPE))
    with pytest.raises(ValueError, match="resample_times=0"):
        sample_heun(denoise, x, karras_sigmas(2), seeded_noise(SHAPE), resample_times=0)
    with pytest.raises(ValueError, match="S_churn=-1"):
        sample_heun(denoise, x, karras_sigmas(2), seeded_noise(SHAPE), S_churn=-1.0)


# ------------------------------------------------------------------ Heun (EDM)


def edm_gaussian_denoiser(mu, s, levels=None):
    """Exact denoiser of data ~ N(mu, s**2) per dimension: E[x0 | x0 + sigma eps = x]."""

    def denoise(x, sigma, x0_prev):
        if levels is not None:
            levels.append(tuple(sigma.shape))
        sigma = ops.reshape(sigma, (-1,) + (1,) * (len(x.shape) - 1))
        return mu + s**2 / (s**2 + ops.square(sigma)) * (x - mu)

    return denoise


def reference_heun(mu, s, x, sigmas, noise, S_churn, S_tmin=0.05, S_tmax=50.0, S_noise=1.003):
    """imagen-pytorch's `one_unet_sample` loop (no inpainting), in float64 NumPy, drawing
    step `i`'s churn noise as `noise(i)`."""

    def denoise(x, sigma):
        return mu + s**2 / (s**2 + sigma**2) * (x - mu)

    sigmas = to_np(sigmas).astype("float64")
    num_steps = len(sigmas) - 1
    gammas = np.where(
        (sigmas >= S_tmin) & (sigmas <= S_tmax), min(S_churn / num_steps, math.sqrt(2) - 1), 0.0
    )
    images = np.asarray(x, "float64")
    for i, (sigma, sigma_next, gamma) in enumerate(zip(sigmas[:-1], sigmas[1:], gammas[:-1])):
        eps = S_noise * to_np(noise(i)).astype("float64")
        sigma_hat = sigma + gamma * sigma
        images_hat = images + math.sqrt(sigma_hat**2 - sigma**2) * eps
        d = (images_hat - denoise(images_hat, sigma_hat)) / sigma_hat
        images_next = images_hat + (sigma_next - sigma_hat) * d
        if sigma_next != 0:
            prime = (images_next - denoise(images_next, sigma_next)) / sigma_next
            images_next = images_hat + 0.5 * (sigma_next - sigma_hat) * (d + prime)
        images = images_next
    return images


@pytest.mark.parametrize("S_churn", [0.0, 80.0])
def test_heun_matches_the_reference_loop(S_churn):
    mu, s = 0.3, 0.7
    shape = (3, 4, 4, 2)
    noise = seeded_noise(shape, 7)
    x = to_np(noise(10**6)) * 80.0
    sigmas = karras_sigmas(12)
    out = to_np(sample_heun(edm_gaussian_denoiser(mu, s), x, sigmas, noise, S_churn=S_churn))
    expected = reference_heun(mu, s, x, sigmas, noise, S_churn)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_heun_lands_on_a_point_mass_with_one_level_per_sample():
    target = np.array([0.5, -0.25, 0.75], "float32")
    levels = []

    def denoise(x, sigma, x0_prev):
        levels.append(tuple(sigma.shape))
        return ops.zeros_like(x) + target

    noise = seeded_noise((16, 3), 2)
    out = to_np(sample_heun(denoise, noise(99) * 80.0, karras_sigmas(10), noise, S_churn=40.0))
    np.testing.assert_allclose(out, np.broadcast_to(target, out.shape), atol=1e-5)
    assert levels and all(shape == (16,) for shape in levels)


def test_heun_recovers_gaussian_data():
    # The probability-flow ODE maps N(mu, s**2 + sigma_max**2) onto N(mu, s**2).
    mu, s = 0.3, 0.7
    noise = seeded_noise((4000, 4), 3)
    x = to_np(noise(99)) * math.sqrt(s**2 + 80.0**2) + mu
    out = to_np(sample_heun(edm_gaussian_denoiser(mu, s), x, karras_sigmas(64), noise, S_churn=0))
    assert abs(out.mean() - mu) < 0.02
    assert abs(out.std() / s - 1.0) < 0.02


def test_heun_compiles_with_the_step_count_as_a_tensor():
    mu, s = 0.2, 0.6
    shape = (8, 4, 4, 1)
    noise = seeded_noise(shape, 5)
    x = to_np(noise(99)) * 80.0
    traces = []

    def run(x, steps):
        traces.append(1)
        schedule = karras_schedule(steps, 0.002, 80.0, 7.0)
        return sample_heun(edm_gaussian_denoiser(mu, s), x, schedule, noise, S_churn=40.0)

    fn = compiled(run)
    for steps in (6, 9):
        out = to_np(fn(ops.convert_to_tensor(x), ops.convert_to_tensor(steps, "int32")))
        expected = reference_heun(mu, s, x, karras_sigmas(steps), noise, 40.0)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    if BACKEND != "torch":
        assert len(traces) == 1


def test_a_schedule_object_and_an_array_give_the_same_samples():
    mu, s = 0.2, 0.6
    noise = seeded_noise((4, 3), 1)
    x = to_np(noise(99)) * 80.0
    sigmas = karras_sigmas(5)
    as_array = sample_heun(edm_gaussian_denoiser(mu, s), x, sigmas, noise, S_churn=10.0)
    as_object = sample_heun(
        edm_gaussian_denoiser(mu, s),
        x,
        Schedule(lambda i: ops.take(sigmas, i), 5),
        noise,
        S_churn=10.0,
    )
    np.testing.assert_array_equal(to_np(as_array), to_np(as_object))
