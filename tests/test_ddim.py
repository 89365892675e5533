"""DDIM sampling: closed-form checks with an exact denoiser, and the cascade's `sampler=`."""

import keras
import numpy as np
import pytest
from keras import ops

from imagen_keras import Imagen
from imagen_keras.diffusion.noise import initial_seed_state, step_normal
from imagen_keras.diffusion.schedules import cosine_log_snr, log_snr_to_alpha_sigma
from imagen_keras.imagen_sampling import ddim_sample_stage, gaussian_sample_stage
from tests.test_imagen import tiny_unet
from tests.unet_helpers import to_numpy

SHAPE = (256, 2, 2, 1)


class GaussianDataDenoiser:
    """The exact noise prediction E[eps | x_t] for data ~ N(mu, s**2) per dimension.

    With `x_t = alpha x0 + sigma eps`: `E[eps | x_t] = sigma (x_t - alpha mu) /
    (alpha**2 s**2 + sigma**2)`; `s = 0` is a point mass at `mu`, where
    `x0 = (x_t - sigma eps) / alpha = mu` exactly.
    """

    self_cond = False

    def __init__(self, mu, s):
        self.mu, self.s = mu, s

    def call_with_cond_scale(self, x, log_snr, **kwargs):
        alpha, sigma = log_snr_to_alpha_sigma(ops.reshape(log_snr, (-1, 1, 1, 1)))
        return sigma * (x - alpha * self.mu) / (ops.square(alpha * self.s) + ops.square(sigma))


def sample(sampler, denoiser, steps, seed=0, **kwargs):
    common = dict(
        noise_schedule="cosine",
        pred_objective="noise",
        use_dynamic_threshold=False,
        dynamic_threshold_percentile=0.95,
        cond_scale=1.0,
        remove_parallel_component=True,
        keep_parallel_frac=0.0,
    )
    common.update(kwargs)
    state = initial_seed_state(seed)
    if sampler == "ddim":
        return to_numpy(ddim_sample_stage(denoiser, SHAPE, state, timesteps=steps, **common))
    return to_numpy(gaussian_sample_stage(denoiser, SHAPE, state, timesteps=steps, **common))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_lands_exactly_on_a_point_mass_from_any_noise(eta):
    target = 0.3
    for seed in (0, 1):
        out = sample("ddim", GaussianDataDenoiser(target, 0.0), 10, seed=seed, eta=eta)
        np.testing.assert_allclose(out, target, atol=1e-4)


def test_ddim_and_ancestral_match_gaussian_data_and_ddim_converges():
    # Narrow enough that clipping to [-1, 1] is negligible (4.5 standard deviations).
    mu, s = 0.1, 0.2
    denoiser = GaussianDataDenoiser(mu, s)
    ddim_50 = sample("ddim", denoiser, 50)
    ddim_400 = sample("ddim", denoiser, 400)
    ancestral = sample("ancestral", denoiser, 500)
    # Each sampler's marginal is the data's. DDIM's first-order error at 50 uniform steps
    # on the cosine schedule shrinks the spread by about 10% for data this narrow.
    for out, std_tol in ((ancestral, 0.05), (ddim_50, 0.15), (ddim_400, 0.05)):
        assert abs(out.mean() - mu) < 0.02
        assert abs(out.std() / s - 1.0) < std_tol
    # From the same initial noise z, the deterministic sampler follows the probability
    # flow ODE, whose solution for Gaussian data is x(t) = alpha mu + sqrt(alpha^2 s^2 +
    # sigma^2) z: the error shrinks about linearly with the step size.
    z = to_numpy(step_normal(SHAPE, initial_seed_state(0), 0))
    alpha0, sigma0 = (float(to_numpy(v)) for v in log_snr_to_alpha_sigma(cosine_log_snr(0.0)))
    exact = alpha0 * mu + np.sqrt((alpha0 * s) ** 2 + sigma0**2) * z
    error_50, error_400 = np.abs(ddim_50 - exact).mean(), np.abs(ddim_400 - exact).mean()
    assert error_50 < 0.02 and error_400 < 0.005 and error_400 < error_50 / 3
    assert np.abs(ddim_50 - ddim_400).mean() < 1.5e-2  # about 0.009


def test_ddim_inpainting_init_images_and_skip_steps():
    known = np.full(SHAPE, -0.5, "float32")
    masks = np.zeros(SHAPE, bool)
    masks[:, 0] = True
    out = sample(
        "ddim",
        GaussianDataDenoiser(0.3, 0.0),
        10,
        eta=1.0,
        skip_steps=3,
        init_images=ops.convert_to_tensor(known),
        inpaint_images=ops.convert_to_tensor(known),
        inpaint_masks=ops.convert_to_tensor(masks),
    )
    np.testing.assert_array_equal(out[:, 0], -0.5)
    np.testing.assert_allclose(out[:, 1], 0.3, atol=1e-4)


def test_ddim_argument_errors():
    denoiser = GaussianDataDenoiser(0.0, 0.0)
    with pytest.raises(ValueError, match="num_steps"):
        sample("ddim", denoiser, 4, num_steps=0)
    with pytest.raises(ValueError, match="skip_steps"):
        sample("ddim", denoiser, 4, skip_steps=4)
    with pytest.raises(ValueError, match="eta"):
        sample("ddim", denoiser, 4, eta=-1.0)


@pytest.mark.filterwarnings("ignore:The base dimension")
def test_cascade_samples_with_ddim():
    keras.utils.set_random_seed(0)
    unet = tiny_unet()
    imagen = Imagen(unet, image_sizes=8, text_embed_dim=16, timesteps=4)
    embeds = np.random.default_rng(0).normal(size=(2, 3, 16)).astype("float32")
    run = dict(text_embeds=embeds, sampler="ddim", ddim_steps=3, seed=5, verbose=False)
    with pytest.warns(UserWarning, match="never been trained"):
        first = to_numpy(imagen.sample(**run))
    with pytest.warns(UserWarning, match="never been trained"):
        again = to_numpy(imagen.sample(**run))
        noisy = to_numpy(imagen.sample(**run, ddim_eta=1.0))
    assert first.shape == (2, 8, 8, 3)
    assert first.min() >= 0.0 and first.max() <= 1.0
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - noisy).max() > 1e-3
    with pytest.raises(ValueError, match="'euler'"):
        imagen.sample(text_embeds=embeds, sampler="euler", verbose=False)
    with pytest.raises(ValueError, match="ddim_steps"):
        imagen.sample(text_embeds=embeds, sampler="ddim", ddim_steps=0, verbose=False)
