"""imagen-pytorch Unet weights -> Keras Unet, checked against the reference's outputs.

Fixtures come from `bench/reference/make_unet_fixtures.py` (imagen-pytorch 2.1.0, random
weights with every constant-initialised tensor randomised). The default run converts
three configs; `--run-slow` converts all of them.
"""

import json
import pathlib
import sys
from functools import partial

import keras
import numpy as np
import pytest
from keras import ops

from imagen_keras import Unet
from imagen_keras.convert import (
    extract_unet_state_dict,
    load_imagen_pytorch_unet_weights,
    unet_from_imagen_pytorch,
    unet_kwargs_from_imagen_pytorch,
)
from imagen_keras.generation import guided_call

FIXTURES = pathlib.Path(__file__).parents[1] / "data" / "reference_unets"
RTOL = 1e-4  # max |keras - torch| <= RTOL * max(1, max |torch|)
SMALL = "dim8_mults1111_rb1_noattn_te128"
FAST = ("tiny64_unet_te128", "sr_unet_te128_lowres")
ALL = sorted(p.name[: -len(".npz")] for p in FIXTURES.glob("*.npz"))

pytestmark = pytest.mark.filterwarnings("ignore:The base dimension of the Unet")


def _nhwc(array):
    return array.transpose(0, 2, 3, 1) if array.ndim == 4 else array


def load_fixture(name):
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    state_dict = {
        k[len("param.") :]: v.astype("float32") for k, v in arrays.items() if k.startswith("param.")
    }
    inputs = {k[len("input.") :]: _nhwc(v) for k, v in arrays.items() if k.startswith("input.")}
    outputs = {k: _nhwc(v) for k, v in arrays.items() if k.startswith("output")}
    kwargs = json.loads(str(arrays["kwargs_json"]))
    return dict(
        kwargs=kwargs,
        state_dict=state_dict,
        inputs=inputs,
        outputs=outputs,
        param_count=int(arrays["param_count"]),
    )


_JITTED = {}


def run(unet, method, inputs, **static):
    """`unet.<method>(x, time, **inputs, **static)` as numpy; jit-compiled on JAX, whose
    op-by-op execution is too slow for a whole Unet on CPU."""
    inputs = dict(inputs)
    x, time = inputs.pop("x"), inputs.pop("time")
    call = getattr(unet, method) if method != "guided_call" else partial(guided_call, unet)
    if keras.backend.backend() != "jax":
        return ops.convert_to_numpy(call(x, time, **inputs, **static))
    import jax

    variables = unet.variables
    key = (id(unet), method, tuple(sorted(static.items())), tuple(sorted(inputs)))
    if key not in _JITTED:

        def fn(values, x, time, inputs):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return call(x, time, **inputs, **static)

        _JITTED[key] = jax.jit(fn)
    return np.asarray(_JITTED[key]([v.value for v in variables], x, time, inputs))


def assert_matches(actual, expected, what):
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual - expected).max()) / scale
    assert err <= RTOL, f"{what}: max |keras - torch| / max(1, max|torch|) = {err:.3g}"


_CONVERTED = {}


def converted(name):
    """(fixture, Keras unet with the fixture's weights), built once per session."""
    if name not in _CONVERTED:
        fixture = load_fixture(name)
        unet = Unet(**unet_kwargs_from_imagen_pytorch(fixture["kwargs"]))
        report = load_imagen_pytorch_unet_weights(unet, fixture["state_dict"])
        assert report.complete and len(report.loaded) == len(fixture["state_dict"])
        _CONVERTED[name] = (fixture, unet)
    return _CONVERTED[name]


@pytest.mark.parametrize(
    "name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in ALL]
)
def test_outputs_match_reference(name):
    fixture, unet = converted(name)
    assert unet.count_params() == fixture["param_count"]
    inputs, outputs = fixture["inputs"], fixture["outputs"]
    assert_matches(run(unet, "__call__", inputs), outputs["output"], name)
    if "output_null" in outputs:
        null = run(unet, "__call__", inputs, cond_drop_prob=1.0)
        assert_matches(null, outputs["output_null"], f"{name}, cond_drop_prob=1")
    if "output_cond_scale3" in outputs:
        guided = run(unet, "guided_call", inputs, cond_scale=3.0)
        assert_matches(guided, outputs["output_cond_scale3"], f"{name}, cond_scale=3")


def test_persisted_torch_package():
    """A real `Unet.persist_to_file` file (float16 tensors): read with weights_only=True,
    config taken from the file; the same weights as the fixture's (whose outputs match
    the reference in the slow run)."""
    pytest.importorskip("torch")
    unet, report = unet_from_imagen_pytorch(FIXTURES / f"{SMALL}.persisted.pt", return_report=True)
    fixture, reference = converted(SMALL)
    assert report.complete and report.num_parameters == fixture["param_count"]
    assert unet.get_config()["dim_mults"] == [1, 1, 1, 1]
    paths = lambda model: [w.path.split("/", 1)[1] for w in model.weights]  # noqa: E731
    assert paths(unet) == paths(reference)
    for actual, expected in zip(_weights(unet), _weights(reference)):
        np.testing.assert_array_equal(actual, expected)


def test_wrong_layout_is_detected():
    """Negative control: one square kernel loaded untransposed breaks the match."""
    fixture, unet = converted(FAST[0])
    key = "to_time_cond.0.weight"
    bad = dict(fixture["state_dict"], **{key: fixture["state_dict"][key].T.copy()})
    load_imagen_pytorch_unet_weights(unet, bad)
    try:
        out = run(unet, "__call__", fixture["inputs"])
        with pytest.raises(AssertionError):
            assert_matches(out, fixture["outputs"]["output"], "wrong layout")
    finally:
        load_imagen_pytorch_unet_weights(unet, fixture["state_dict"])


def _weights(unet):
    return [ops.convert_to_numpy(w) for w in unet.weights]


def test_missing_key_refused_and_nothing_loaded():
    fixture, unet = converted(SMALL)
    before = _weights(unet)
    dropped = "mid_block1.block2.project.weight"
    partial = {k: v + 1.0 for k, v in fixture["state_dict"].items() if k != dropped}
    with pytest.raises(ValueError, match=r"missing from the state dict \(1\)") as info:
        load_imagen_pytorch_unet_weights(unet, partial)
    assert dropped in str(info.value)
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(unet)))

    report = load_imagen_pytorch_unet_weights(unet, partial, allow_partial=True)
    assert report.missing == [dropped] and not report.complete
    assert len(report.loaded) == len(fixture["state_dict"]) - 1
    load_imagen_pytorch_unet_weights(unet, fixture["state_dict"])


def test_unexpected_key_and_shape_mismatch_refused():
    fixture, unet = converted(SMALL)
    state_dict = dict(fixture["state_dict"])
    state_dict["final_conv.weight"] = np.zeros((3, 8, 5, 5), "float32")
    state_dict["some_extra.weight"] = np.zeros((2,), "float32")
    with pytest.raises(ValueError) as info:
        load_imagen_pytorch_unet_weights(unet, state_dict)
    message = str(info.value)
    assert "final_conv.weight: state dict has (3, 8, 5, 5), unet needs (3, 8, 3, 3)" in message
    assert "unexpected in the state dict (unused) (1)" in message
    assert "some_extra.weight" in message
    report = load_imagen_pytorch_unet_weights(unet, state_dict, allow_partial=True)
    assert report.unexpected == ["some_extra.weight"]
    assert [k for k, _, _ in report.shape_mismatches] == ["final_conv.weight"]
    load_imagen_pytorch_unet_weights(unet, fixture["state_dict"])


def test_npz_file_without_torch(tmp_path, monkeypatch):
    fixture, unet = converted(SMALL)
    path = tmp_path / "unet.npz"
    np.savez(path, **{k: v * 2.0 for k, v in fixture["state_dict"].items()})
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails
    try:
        report = load_imagen_pytorch_unet_weights(unet, path)
        assert report.complete
        np.testing.assert_array_equal(
            ops.convert_to_numpy(unet.final_conv.bias),
            2.0 * fixture["state_dict"]["final_conv.bias"],
        )
        with pytest.raises(ImportError, match="needs torch"):
            load_imagen_pytorch_unet_weights(unet, FIXTURES / f"{SMALL}.persisted.pt")
    finally:
        load_imagen_pytorch_unet_weights(unet, fixture["state_dict"])


def test_safetensors_file(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    fixture, unet = converted(SMALL)
    path = tmp_path / "unet.safetensors"
    safetensors_numpy.save_file({k: v - 1.0 for k, v in fixture["state_dict"].items()}, path)
    try:
        assert load_imagen_pytorch_unet_weights(unet, str(path)).complete
        np.testing.assert_array_equal(
            ops.convert_to_numpy(unet.final_conv.bias),
            fixture["state_dict"]["final_conv.bias"] - 1.0,
        )
    finally:
        load_imagen_pytorch_unet_weights(unet, fixture["state_dict"])


def _trainer_checkpoint(state_dict):
    """The layout of `ImagenTrainer.save` with two unets and EMA (ema-pytorch 0.8)."""
    model, ema = {}, {}
    for i in range(2):
        ema[f"{i}.initted"] = np.array(True)
        ema[f"{i}.step"] = np.array(10)
        for k, v in state_dict.items():
            model[f"unets.{i}.{k}"] = v + i
            ema[f"{i}.online_model.{k}"] = v + i
            ema[f"{i}.ema_model.{k}"] = v + i + 0.5
    return {"model": model, "version": "2.1.0", "steps": np.array([10, 10]), "ema": ema}


def test_extract_online_and_ema_unet_state_dicts():
    state_dict = {"final_conv.bias": np.arange(3.0), "null_text_hidden": np.ones((1, 4))}
    checkpoint = _trainer_checkpoint(state_dict)
    online = extract_unet_state_dict(checkpoint, 1)
    ema = extract_unet_state_dict(checkpoint, 1, use_ema=True)
    assert sorted(online) == sorted(ema) == sorted(state_dict)
    np.testing.assert_array_equal(online["final_conv.bias"], np.arange(3.0) + 1)
    np.testing.assert_array_equal(ema["final_conv.bias"], np.arange(3.0) + 1.5)
    with pytest.raises(ValueError, match=r"holds unets \[0, 1\]"):
        extract_unet_state_dict(checkpoint, 2)
    with pytest.raises(ValueError, match=r"holds unets \[0, 1\]"):
        extract_unet_state_dict(checkpoint, 2, use_ema=True)
    del checkpoint["ema"]
    with pytest.raises(ValueError, match="no EMA weights"):
        extract_unet_state_dict(checkpoint, 0, use_ema=True)


def test_trainer_checkpoint_ema_weights_load():
    fixture, unet = converted(SMALL)
    checkpoint = _trainer_checkpoint(fixture["state_dict"])
    with pytest.raises(ValueError, match="extract_unet_state_dict"):
        load_imagen_pytorch_unet_weights(unet, checkpoint)
    try:
        load_imagen_pytorch_unet_weights(unet, extract_unet_state_dict(checkpoint, 1, use_ema=True))
        np.testing.assert_array_equal(
            ops.convert_to_numpy(unet.null_text_hidden),
            fixture["state_dict"]["null_text_hidden"] + 1.5,
        )
    finally:
        load_imagen_pytorch_unet_weights(unet, fixture["state_dict"])


def test_config_errors():
    state_dict = {"final_conv.bias": np.zeros(3)}
    with pytest.raises(ValueError, match="pass `config`"):
        unet_from_imagen_pytorch(state_dict)
    with pytest.raises(ValueError, match="pass `unet_index`"):
        unet_from_imagen_pytorch(_trainer_checkpoint(state_dict), config=dict(dim=8))
    with pytest.raises(ValueError, match="apply to ImagenTrainer checkpoints only"):
        unet_from_imagen_pytorch(state_dict, config=dict(dim=8), unet_index=0)
    with pytest.raises(ValueError, match=r"does not take: \['bogus'\]"):
        unet_kwargs_from_imagen_pytorch(dict(dim=8, bogus=1))
    kwargs = unet_kwargs_from_imagen_pytorch(dict(dim=8, dim_mults=[1, 2]))
    assert kwargs == dict(dim=8, dim_mults=(1, 2))
