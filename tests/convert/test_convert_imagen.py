"""Whole imagen-pytorch cascades -> Keras `Imagen` / `ElucidatedImagen`, checked against
the reference's outputs.

Fixtures come from `bench/reference/make_cascade_fixtures.py` (imagen-pytorch 2.1.0,
random "strict" weights): `<name>.checkpoint.npz` is the reference's `ImagenTrainer.save`
checkpoint (with its `imagen_type` and `imagen_params`) in the flat torch-free form, and
`<name>.outputs.npz` holds inputs and the reference's outputs: each stage through the
cascade's own conditioning path, and one whole `sample` call with every random draw it
made. No imagen-pytorch (nor torch) is needed here.
"""

import contextlib
import json
import pathlib

import numpy as np
import pytest
from keras import ops

from imagen_keras import Imagen, NullUnet
from imagen_keras.backend import compile_inference_function
from imagen_keras.convert import (
    imagen_from_imagen_pytorch,
    imagen_kwargs_from_imagen_pytorch,
    read_checkpoint,
)
from imagen_keras.diffusion import (
    dynamic_threshold,
    edm_preconditioning,
    get_log_snr_fn,
    q_posterior,
    q_sample,
    static_clip,
)
from imagen_keras.generation import guided_call
from imagen_keras.imagen import x_start_from_prediction

FIXTURES = pathlib.Path(__file__).parents[1] / "data" / "reference_cascades"
GAUSSIAN, ELUCIDATED = "imagen_8to16", "elucidated_8to16"
RTOL = 1e-4  # max |keras - torch| <= RTOL * max(1, max |torch|)
COND_SCALE = 3.0

pytestmark = pytest.mark.filterwarnings("ignore:The base dimension of the Unet")


def _nhwc(array):
    return array.transpose(0, 2, 3, 1) if array.ndim == 4 else array


def load_outputs(name, directory=FIXTURES):
    """The reference's recorded inputs and outputs, images channels-last."""
    with np.load(pathlib.Path(directory) / f"{name}.outputs.npz", allow_pickle=False) as data:
        return {k: _nhwc(data[k]) for k in data.files}


def assert_matches(actual, expected, what, rtol=RTOL):
    actual = np.asarray(actual).reshape(expected.shape)
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual - expected).max()) / scale
    assert err <= rtol, f"{what}: max |keras - torch| / max(1, max|torch|) = {err:.3g}"
    return err


_CONVERTED = {}


def converted(name):
    """(cascade, report) converted from the fixture checkpoint, once per session."""
    if name not in _CONVERTED:
        _CONVERTED[name] = imagen_from_imagen_pytorch(
            FIXTURES / f"{name}.checkpoint.npz", return_report=True
        )
    return _CONVERTED[name]


def _is_elucidated(imagen):
    return hasattr(imagen, "sigma_data")


# ------------------------------------------------------------------ stage outputs


def stage_fn(imagen, index):
    """A compiled `inputs -> outputs` of stage `index`, as the reference fixture records:
    Gaussian `p_mean_variance` or the elucidated preconditioned denoiser, guided with
    cond_scale 3, through the cascade's own schedules and conditioning."""
    unet = imagen.unets[index]
    lowres_fn = get_log_snr_fn(imagen.lowres_noise_schedule)
    elucidated = _is_elucidated(imagen)

    def conditioning(inputs):
        kwargs = dict(text_embeds=inputs["text_embeds"], text_mask=inputs["text_masks"])
        if index > 0:
            kwargs["lowres_cond_img"], *_ = q_sample(
                inputs["lowres_cond_img"], inputs["aug_t"], inputs["lowres_noise"], lowres_fn
            )
            kwargs["lowres_noise_times"] = lowres_fn(inputs["aug_t"])
        return kwargs

    def threshold(x):
        if imagen.dynamic_thresholding[index]:
            return dynamic_threshold(x, imagen.dynamic_thresholding_percentile)
        return static_clip(x)

    def gaussian(inputs):
        log_snr_fn = get_log_snr_fn(imagen.noise_schedules[index])
        x, t = inputs["x"], inputs["t"]
        pred = guided_call(unet, x, log_snr_fn(t), cond_scale=COND_SCALE, **conditioning(inputs))
        objective = imagen.pred_objectives[index]
        x_start = threshold(x_start_from_prediction(pred, x, t, objective, log_snr_fn))
        mean, _, log_var = q_posterior(x_start, x, t, inputs["t_next"], log_snr_fn)
        return dict(pred=pred, x_start=x_start, mean=mean, log_var=log_var)

    def edm(inputs):
        x, sigma = inputs["x"], inputs["sigma"]
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, imagen.sigma_data[index])
        pad = lambda c: ops.reshape(c, (-1, 1, 1, 1))  # noqa: E731
        out = guided_call(
            unet, pad(c_in) * x, c_noise, cond_scale=COND_SCALE, **conditioning(inputs)
        )
        denoised = pad(c_skip) * x + pad(c_out) * out
        return dict(denoised=denoised, denoised_clamped=threshold(denoised))

    return compile_inference_function(imagen, edm if elucidated else gaussian)


def stage_inputs(reference, index):
    prefix = f"stage{index}.input."
    inputs = {k[len(prefix) :]: v for k, v in reference.items() if k.startswith(prefix)}
    return dict(inputs, text_embeds=reference["text_embeds"], text_masks=reference["text_masks"])


def check_stages(imagen, reference, what, output="output", indices=None):
    """Stage outputs (every stage, or `indices`) against the reference's; returns the
    errors."""
    errors = {}
    for index in range(imagen.num_unets) if indices is None else indices:
        outputs = stage_fn(imagen, index)(stage_inputs(reference, index))
        for key, value in outputs.items():
            label = f"{what} stage {index + 1} {key}"
            errors[label] = assert_matches(
                ops.convert_to_numpy(value), reference[f"stage{index}.{output}.{key}"], label
            )
    return errors


# ------------------------------------------------------------------ replayed sampling


def draw_tables(imagen, reference):
    """The reference's recorded sampling draws, laid out by our draw numbers.

    Per stage the reference draws: the low-res augmentation noise (super-resolution
    stages), the initial noise, then one draw per step (Gaussian: the posterior noise;
    elucidated: the churn noise). Our stages number their draws (see
    `generation/stage.py` and `diffusion/samplers.py`): 0 initial noise, 1 augmentation
    noise, then step `i` uses 3 + 3 i (Gaussian ancestral) or 2 + i (Heun). Returns
    shape -> `(draws, *shape)` table (stages have distinct image sizes).
    """
    draws = []
    while f"sample.draw{len(draws)}" in reference:
        draws.append(reference[f"sample.draw{len(draws)}"])
    elucidated = _is_elucidated(imagen)
    tables, position = {}, 0
    for index in range(imagen.num_unets):
        steps = imagen.num_sample_steps[index] if elucidated else imagen.timesteps[index]
        numbers = ([1] if index > 0 else []) + [0]
        numbers += [2 + i if elucidated else 3 + 3 * i for i in range(steps)]
        shape = draws[position].shape
        table = np.zeros((max(numbers) + 1, *shape), "float32")
        for number in numbers:
            table[number] = draws[position]
            position += 1
        tables[shape] = table
    assert position == len(draws), (position, len(draws))
    return tables


@contextlib.contextmanager
def replayed_noise(tables):
    """Make the stages' per-image noise return the recorded draws instead (a batch-noise
    mode: the reference draws one tensor per batch)."""
    import imagen_keras.generation.stage as stage

    original = stage.per_sample_normal

    def per_sample_normal(seeds, shape, draw):
        table = ops.convert_to_tensor(tables[tuple(int(s) for s in shape)])
        return ops.take(table, draw % stage.DRAWS_PER_STAGE, axis=0)

    stage.per_sample_normal = per_sample_normal
    try:
        yield
    finally:
        stage.per_sample_normal = original


def sample_with_reference_noise(imagen, reference):
    """`imagen.sample` as the fixture's reference call, with the reference's draws."""
    saved, imagen._stage_fns = imagen._stage_fns, {}  # no traces with real noise
    try:
        with replayed_noise(draw_tables(imagen, reference)):
            outputs = imagen.sample(
                text_embeds=reference["text_embeds"],
                text_masks=reference["text_masks"],
                cond_scale=COND_SCALE,
                return_all_unet_outputs=True,
                verbose=False,
                seed=0,
            )
    finally:
        imagen._stage_fns = saved
    return [ops.convert_to_numpy(o) for o in outputs]


def check_samples(imagen, reference, what):
    """Both stages' images against the reference's. The tolerance is 1e-4, or twice the
    reference's own float32 reproducibility (`sample.floor`: how far its images move
    when its draws are perturbed by a relative 1e-7) where that is larger, as for the
    Heun sampler, whose last correction divides by sigma_min = 0.002."""
    errors = {}
    for index, image in enumerate(sample_with_reference_noise(imagen, reference)):
        label = f"{what} sample stage {index + 1}"
        rtol = max(RTOL, 2.0 * float(reference["sample.floor"][index]))
        errors[label] = assert_matches(image, reference[f"sample.stage{index}"], label, rtol)
    return errors


# ------------------------------------------------------------------ tests


def test_gaussian_cascade_config_and_steps():
    imagen, report = converted(GAUSSIAN)
    assert isinstance(imagen, Imagen) and report.complete
    assert report.steps == [3, 5]
    np.testing.assert_array_equal(ops.convert_to_numpy(imagen.unet_train_steps), [3, 5])
    assert imagen.timesteps == (4, 3)
    assert imagen.noise_schedules == ("cosine", "linear")
    assert imagen.pred_objectives == ("noise", "v")
    assert imagen.dynamic_thresholding == (True, False)
    assert imagen.cond_drop_prob == 0.5  # ImagenConfig's default, not Imagen's
    assert imagen.lowres_sample_noise_level == 0.15
    assert imagen.text_embed_dim == 16
    base, sr = imagen.unets
    assert (base.attn_heads, base.attn_dim_head) == (2, 8)
    assert (sr.attn_heads, sr.attn_dim_head) == (16, 32)  # UnetConfig's defaults
    assert sr.lowres_cond and sr.self_cond and sr.text_embed_dim == 16
    assert [len(r.loaded) for r in report.unets] == [272, 210]
    assert "Training steps per unet: [3, 5]" in report.summary()


def test_gaussian_stages_match_reference():
    imagen, _ = converted(GAUSSIAN)
    check_stages(imagen, load_outputs(GAUSSIAN), "Imagen")


def test_gaussian_sampling_matches_reference():
    """Ancestral sampling of both stages, every draw replayed: same images."""
    imagen, _ = converted(GAUSSIAN)
    check_samples(imagen, load_outputs(GAUSSIAN), "Imagen")


def test_elucidated_cascade_config():
    from imagen_keras import ElucidatedImagen

    imagen, report = converted(ELUCIDATED)
    assert isinstance(imagen, ElucidatedImagen) and report.complete
    assert report.steps == [4, 6]
    assert imagen.num_sample_steps == (3, 2)
    assert imagen.sigma_max == (80, 40) and imagen.sigma_data == (0.5, 0.4)
    assert imagen.rho == (7, 5) and imagen.S_churn == (0, 0)
    assert imagen.sigma_min == (0.002, 0.002) and imagen.S_noise == (1.003, 1.003)
    assert imagen.dynamic_thresholding == (False, True)
    assert imagen.cond_drop_prob == 0.5  # ElucidatedImagenConfig's default


def test_elucidated_stages_match_reference():
    imagen, _ = converted(ELUCIDATED)
    check_stages(imagen, load_outputs(ELUCIDATED), "ElucidatedImagen")


def test_elucidated_sampling_matches_reference():
    """Heun sampling (S_churn 0) of both stages from the reference's initial and
    augmentation noise: same images. The reference was made to condition its
    super-resolution unet on the log-SNR of the augmentation level at sampling, as its
    training (and imagen-keras) does; unpatched, its raw-level quirk changes the images."""
    imagen, _ = converted(ELUCIDATED)
    reference = load_outputs(ELUCIDATED)
    check_samples(imagen, reference, "ElucidatedImagen")
    quirk = float(np.abs(reference["sample_quirk.stage1"] - reference["sample.stage1"]).max())
    assert quirk > 0.01


# ------------------------------------------------------------------ weights and reports


def _checkpoint(name=GAUSSIAN):
    return read_checkpoint(FIXTURES / f"{name}.checkpoint.npz")


def _weight(imagen, index, key):
    """The Keras value of reference key `key` of unet `index` (torch layout)."""
    from imagen_keras.convert.unet_weights import unet_weight_entries

    for entry in unet_weight_entries(imagen.unets[index]):
        if entry.key == key:
            return ops.convert_to_numpy(entry.variable)
    raise KeyError(key)


def test_flat_checkpoint_is_nested():
    checkpoint = _checkpoint()
    assert sorted(checkpoint) == ["imagen_params", "imagen_type", "model", "steps", "version"]
    assert checkpoint["imagen_type"] == "original" and checkpoint["version"] == "2.1.0"
    assert isinstance(checkpoint["imagen_params"], dict)
    assert all(k.startswith("unets.") for k in checkpoint["model"])


def test_ema_weights():
    """`use_ema=True` takes `ema.{i}.ema_model.*` (ema-pytorch's layout, with its step
    counters and online copy), not the online `model`; leftovers are reported."""
    checkpoint = _checkpoint()
    ema = {}
    for key, value in checkpoint["model"].items():
        _, index, rest = key.split(".", 2)
        ema[f"{index}.ema_model.{rest}"] = value.astype("float32") + 0.5
        ema[f"{index}.online_model.{rest}"] = value
        ema[f"{index}.initted"] = np.array(True)
        ema[f"{index}.step"] = np.array(7)
    ema["2.ema_model.final_conv.bias"] = np.zeros(3, "float32")
    checkpoint["ema"] = ema
    imagen, report = imagen_from_imagen_pytorch(
        checkpoint, use_ema=True, allow_partial=True, return_report=True
    )
    assert report.weights == "EMA" and all(r.complete for r in report.unets)
    assert report.unexpected == ["ema.2.ema_model.final_conv.bias"] and not report.complete
    assert "unexpected in the checkpoint (unused) (1)" in report.summary()
    key = "final_conv.bias"
    np.testing.assert_allclose(
        _weight(imagen, 1, key), checkpoint["model"][f"unets.1.{key}"].astype("float32") + 0.5
    )
    del checkpoint["ema"]
    with pytest.raises(ValueError, match="no EMA weights"):
        imagen_from_imagen_pytorch(checkpoint, use_ema=True)


def test_partial_checkpoint_refused_unless_allowed():
    """Missing and left-over tensors are listed; nothing is returned unless allowed. (A
    one-NullUnet cascade keeps this cheap; real unets report the same way.)"""
    config = {"unets": [{"is_null": True}], "image_sizes": [8], "text_embed_dim": 16}
    checkpoint = {"model": {"unets.0.extra": np.zeros(2), "unets.1.final_conv.bias": np.zeros(3)}}
    with pytest.raises(ValueError) as info:
        imagen_from_imagen_pytorch(checkpoint, config)
    message = str(info.value)
    assert "allow_partial=True" in message
    assert "missing from the state dict (1):\n      dummy_parameter" in message
    assert "unexpected in the state dict (unused) (1):\n      extra" in message
    assert "unexpected in the checkpoint (unused) (1):\n    model.unets.1.final_conv.bias" in (
        message
    )
    assert "Training steps per unet: none recorded" in message
    imagen, report = imagen_from_imagen_pytorch(
        checkpoint, config, allow_partial=True, return_report=True
    )
    assert not report.complete and report.unets[0].missing == ["dummy_parameter"]
    assert report.unexpected == ["model.unets.1.final_conv.bias"]


def test_null_unet_config_argument_and_overrides():
    """A checkpoint without `imagen_params` converts with `config=`; a NullUnetConfig
    stage becomes a `NullUnet` with the reference's dummy parameter; Keras arguments
    override the config's."""
    checkpoint = _checkpoint()
    params = checkpoint.pop("imagen_params")
    del checkpoint["imagen_type"]
    with pytest.raises(ValueError, match="pass `config`"):
        imagen_from_imagen_pytorch(checkpoint)
    model = {k: v for k, v in checkpoint["model"].items() if k.startswith("unets.1.")}
    model["unets.0.dummy_parameter"] = np.array([0.25], "float32")
    checkpoint["model"] = model
    config = dict(params, unets=[{"is_null": True}, params["unets"][1]])
    wrapped = {"imagen_type": "original", "imagen_params": config}
    with pytest.raises(ValueError, match="Unknown overrides"):
        imagen_from_imagen_pytorch(checkpoint, wrapped, num_sample_steps=4)
    imagen, report = imagen_from_imagen_pytorch(
        checkpoint, wrapped, timesteps=(2, 2), seed=3, return_report=True
    )
    assert isinstance(imagen.unets[0], NullUnet) and report.complete
    np.testing.assert_array_equal(ops.convert_to_numpy(imagen.unets[0].dummy), [0.25])
    assert imagen.timesteps == (2, 2) and imagen.seed == 3
    assert any("overrides" in n for n in report.notes)


def test_config_defaults_and_errors():
    unet = dict(dim=8, dim_mults=[1, 2])
    kwargs, notes = imagen_kwargs_from_imagen_pytorch(dict(unets=[unet], image_sizes=[8]))
    assert kwargs["cond_drop_prob"] == 0.5 and kwargs["timesteps"] == 1000
    assert kwargs["text_encoder_name"] == "google/t5-v1_1-base"
    assert "video" not in kwargs and kwargs["image_sizes"] == (8,)
    [unet_kwargs] = kwargs["unets"]
    assert (unet_kwargs["attn_heads"], unet_kwargs["attn_dim_head"]) == (16, 32)
    assert unet_kwargs["text_embed_dim"] == 768 and unet_kwargs["dim_mults"] == (1, 2)
    assert any("ImagenConfig defaults" in n for n in notes)
    assert any("UnetConfig defaults" in n for n in notes)
    kwargs, _ = imagen_kwargs_from_imagen_pytorch(
        dict(unets=[unet], image_sizes=[8], sigma_max=[40]), "elucidated"
    )
    assert kwargs["sigma_max"] == (40,) and kwargs["S_churn"] == 80

    def fails(params, match, imagen_type="original"):
        with pytest.raises(ValueError, match=match):
            imagen_kwargs_from_imagen_pytorch(params, imagen_type)

    base = dict(unets=[unet], image_sizes=[8])
    fails(dict(base, video=True), "video cascade")
    fails(dict(base, temporal_downsample_factor=2), "video-only")
    fails(dict(base, bogus=1), r"does not take: \['bogus'\]")
    fails(dict(base, num_sample_steps=8), "pass imagen_type='elucidated'")
    fails(dict(base, timesteps=8), r"ElucidatedImagen does not take: \['timesteps'\]", "elucidated")
    fails(dict(base, image_sizes=[8, 16]), "1 unets but 2 image sizes")
    fails(dict(unets=[dict(dim=8)], image_sizes=[8]), "lacks `dim_mults`")
    fails(dict(unets=[dict(unet, temporal_strides=2)], image_sizes=[8]), "temporal_strides")
    fails(dict(image_sizes=[8]), "lacks `unets`")
    fails(base, "imagen_type", imagen_type="video")


def test_safetensors_flat_checkpoint(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    checkpoint = _checkpoint(ELUCIDATED)
    tensors = {f"model.{k}": v for k, v in checkpoint["model"].items()}
    tensors["steps"] = np.asarray(checkpoint["steps"])
    metadata = {
        "imagen_type": checkpoint["imagen_type"],
        "imagen_params": json.dumps(checkpoint["imagen_params"]),
    }
    path = tmp_path / "checkpoint.safetensors"
    safetensors_numpy.save_file(tensors, path, metadata=metadata)
    read = read_checkpoint(path)
    assert read["imagen_type"] == "elucidated"
    assert read["imagen_params"] == checkpoint["imagen_params"]
    assert sorted(read["model"]) == sorted(checkpoint["model"])


def test_not_a_trainer_checkpoint():
    with pytest.raises(ValueError, match="Expected an ImagenTrainer checkpoint"):
        imagen_from_imagen_pytorch({"final_conv.bias": np.zeros(3)})
