"""`python -m imagen_keras.convert imagen ...`, run in-process through `main`.

The fixture is the flat form of a reference `ImagenTrainer.save` checkpoint (see
`test_convert_imagen.py`); the written `.keras` file is loaded back and compared with
the API's conversion, whose outputs `test_convert_imagen.py` checks against the
reference's.
"""

import json
import os

import keras
import numpy as np
import pytest
import yaml
from keras import ops

from imagen_keras.convert import __main__ as cli
from imagen_keras.convert import read_checkpoint
from imagen_keras.convert.__main__ import main
from tests.convert.test_convert_imagen import ELUCIDATED, FIXTURES, GAUSSIAN, converted

pytestmark = pytest.mark.filterwarnings("ignore:The base dimension of the Unet")


def _main_error(capsys, argv):
    """Run `main(argv)`, expecting a refusal; returns its one-line error."""
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("imagen-keras-convert: error: ") and "\n" not in err
    return err


def test_imagen_command(tmp_path, capsys):
    """The reference's torch checkpoint itself (optimizer states and all, read with
    `weights_only=True`) where torch is installed, else its flat .npz form."""
    source = FIXTURES / f"{ELUCIDATED}.checkpoint.npz"
    try:
        import torch
    except ImportError:
        pass
    else:
        checkpoint = read_checkpoint(source)
        checkpoint["model"] = {
            k: torch.from_numpy(v.astype("float32")) for k, v in checkpoint["model"].items()
        }
        checkpoint["steps"] = torch.from_numpy(checkpoint["steps"])
        checkpoint["scaler0"] = {}
        checkpoint["optim0"] = {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]}
        source = tmp_path / "checkpoint.pt"
        torch.save(checkpoint, source)
    output = tmp_path / "out" / "cascade.keras"
    output.parent.mkdir()
    assert main(["imagen", str(source), str(output)]) == 0
    printed = capsys.readouterr().out
    assert "Reading the cascade (online weights)" in printed
    assert "ElucidatedImagen with 2 unets, online weights." in printed
    assert "Unet 1: Loaded 272 tensors (110,816 values)" in printed
    assert "Training steps per unet: [4, 6]" in printed
    assert "Saved the Keras ElucidatedImagen (242,185 unet parameters)" in printed
    assert os.listdir(output.parent) == ["cascade.keras"]  # no temporary file left behind
    loaded = keras.saving.load_model(output)
    reference, _ = converted(ELUCIDATED)
    assert type(loaded) is type(reference)
    for name in ("image_sizes", "num_sample_steps", "sigma_max", "sigma_data", "cond_drop_prob"):
        assert getattr(loaded, name) == getattr(reference, name), name
    for a, b in zip(loaded.weights, reference.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))


def test_config_file_and_partial_conversion(tmp_path, capsys, monkeypatch):
    """A checkpoint without `imagen_params` needs --config; a partial one is refused
    (nothing written) unless --allow-partial. (A one-NullUnet cascade keeps it cheap.)"""
    source = tmp_path / "checkpoint.npz"
    np.savez(source, **{"model.unets.0.extra": np.zeros(2), "steps": np.array([2])})
    config = {"unets": [{"is_null": True}], "image_sizes": [8], "text_embed_dim": 16}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    output = tmp_path / "cascade.keras"
    output.write_bytes(b"previous version")

    err = _main_error(capsys, ["imagen", str(source), str(output)])
    assert "does not record its cascade config" in err and "pass `config`" in err
    argv = ["imagen", str(source), str(output), "--config", str(config_path)]
    err = _main_error(capsys, argv)
    assert "1 missing, 1 unexpected, 0 misshapen: dummy_parameter, extra" in err
    assert "--allow-partial" in err
    assert output.read_bytes() == b"previous version"

    saved = {}  # saving is covered above; keep the converted cascade instead
    monkeypatch.setattr(cli, "_save_atomically", lambda model, path: saved.update({path: model}))
    assert main([*argv, "--allow-partial"]) == 0
    printed = capsys.readouterr().out
    assert "config from" in printed and "missing from the state dict (1)" in printed
    assert "Partial conversion: 1 Keras variables keep their initial values." in printed
    np.testing.assert_array_equal(ops.convert_to_numpy(saved[str(output)].unet_train_steps), [2])


def test_bad_input_errors(tmp_path, capsys):
    source = str(FIXTURES / f"{GAUSSIAN}.checkpoint.npz")
    output = str(tmp_path / "cascade.keras")
    err = _main_error(capsys, ["imagen", str(tmp_path / "nowhere.pt"), output])
    assert "No checkpoint file at" in err
    err = _main_error(capsys, ["imagen", source, str(tmp_path / "cascade.h5")])
    assert "OUTPUT must end in .keras" in err
    err = _main_error(capsys, ["imagen", source, output, "--ema"])
    assert "no EMA weights" in err
    unet_npz = str(FIXTURES.parent / "reference_unets" / "tiny64_uncond.npz")
    err = _main_error(capsys, ["imagen", unet_npz, output])
    assert "Expected an ImagenTrainer checkpoint" in err
    (tmp_path / "bad.json").write_text("[1, 2]")
    err = _main_error(capsys, ["imagen", source, output, "--config", str(tmp_path / "bad.json")])
    assert "must hold a mapping of ImagenConfig / ElucidatedImagenConfig fields" in err
    (tmp_path / "video.json").write_text(json.dumps({"unets": [], "image_sizes": [], "video": 1}))
    err = _main_error(capsys, ["imagen", source, output, "--config", str(tmp_path / "video.json")])
    assert "video cascade" in err
    assert not os.path.exists(output)
    with pytest.raises(SystemExit) as info:  # argparse: usage errors exit with status 2
        main(["imagen", source, output, "--imagen-type", "video"])
    assert info.value.code == 2
