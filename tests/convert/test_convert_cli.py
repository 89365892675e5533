"""`python -m imagen_keras.convert unet ...`, run in-process through `main`.

The written `.keras` files are loaded back and checked against the reference outputs
recorded in the fixtures (imagen-pytorch 2.1.0), as in `test_unet_conversion.py`.
"""

import json
import os

import keras
import numpy as np
import pytest
import yaml
from keras import ops

from imagen_keras.convert import __main__ as cli
from imagen_keras.convert.__main__ import main
from tests.convert.test_unet_conversion import (
    FIXTURES,
    SMALL,
    assert_matches,
    load_fixture,
    run,
)

pytestmark = pytest.mark.filterwarnings("ignore:The base dimension of the Unet")
PERSISTED = FIXTURES / f"{SMALL}.persisted.pt"
DROPPED = "mid_block1.block2.project.weight"


@pytest.fixture(scope="module")
def fixture():
    return load_fixture(SMALL)


def _write_inputs(directory, fixture, config_format="yaml", drop=()):
    """The fixture's state dict as an .npz file and its Unet arguments as a config file."""
    state_dict = {k: v for k, v in fixture["state_dict"].items() if k not in drop}
    np.savez(directory / "unet.npz", **state_dict)
    config = directory / f"config.{config_format}"
    dump = json.dumps if config_format == "json" else yaml.safe_dump
    config.write_text(dump(fixture["kwargs"]))
    return str(directory / "unet.npz"), str(config)


def _assert_reference_output(path, fixture):
    model = keras.saving.load_model(path)
    assert model.count_params() == fixture["param_count"]
    actual = run(model, "__call__", fixture["inputs"])
    assert_matches(actual, fixture["outputs"]["output"], os.path.basename(path))


def _main_error(capsys, argv):
    """Run `main(argv)`, expecting a refusal; returns its one-line error."""
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("imagen-keras-convert: error: ") and "\n" not in err
    return err


def test_persisted_package(tmp_path, capsys, fixture):
    pytest.importorskip("torch")
    output = tmp_path / "unet.keras"
    assert main(["unet", str(PERSISTED), str(output)]) == 0
    printed = capsys.readouterr().out
    assert "Unet.persist_to_file package and its config" in printed
    assert f"Loaded 328 tensors ({fixture['param_count']:,} values)" in printed
    assert "missing" not in printed and "unexpected" not in printed
    assert os.listdir(tmp_path) == ["unet.keras"]  # no temporary file left behind
    _assert_reference_output(str(output), fixture)


def test_state_dict_npz_with_yaml_config(tmp_path, capsys, fixture):
    source, config = _write_inputs(tmp_path, fixture)
    output = tmp_path / "out" / "unet.keras"
    output.parent.mkdir()
    assert main(["unet", source, str(output), "--config", config]) == 0
    printed = capsys.readouterr().out
    assert "a unet state dict" in printed and "Loaded 328 tensors" in printed
    assert os.listdir(output.parent) == ["unet.keras"]
    _assert_reference_output(str(output), fixture)


def test_trainer_checkpoint_ema_unet(tmp_path, capsys, monkeypatch, fixture):
    torch = pytest.importorskip("torch")
    model, ema = {}, {}  # `ImagenTrainer.save` layout, two unets with EMA
    for i in range(2):
        for k, v in fixture["state_dict"].items():
            model[f"unets.{i}.{k}"] = torch.from_numpy(v + i)
            ema[f"{i}.online_model.{k}"] = torch.from_numpy(v + i)
            ema[f"{i}.ema_model.{k}"] = torch.from_numpy(v + i + 0.5)
    source = tmp_path / "checkpoint.pt"
    torch.save({"model": model, "ema": ema, "version": "2.1.0"}, source)
    _, config = _write_inputs(tmp_path, fixture, config_format="json")
    output = str(tmp_path / "unet1.keras")

    err = _main_error(capsys, ["unet", str(source), output, "--unet-index", "1"])
    assert "pass --config" in err
    saved = {}  # saving is covered above; keep the converted unet instead
    monkeypatch.setattr(cli, "_save_atomically", lambda unet, path: saved.update({path: unet}))
    argv = ["unet", str(source), output, "--config", config, "--unet-index", "1", "--ema"]
    assert main(argv) == 0
    assert "unet 1 (EMA weights) of an ImagenTrainer checkpoint" in capsys.readouterr().out
    np.testing.assert_array_equal(
        ops.convert_to_numpy(saved[output].final_conv.bias),
        fixture["state_dict"]["final_conv.bias"] + 1.5,
    )


def test_partial_conversion_refused(tmp_path, capsys, fixture):
    source, config = _write_inputs(tmp_path, fixture, drop=[DROPPED])
    output = tmp_path / "unet.keras"
    output.write_bytes(b"previous version")
    before = sorted(os.listdir(tmp_path))
    err = _main_error(capsys, ["unet", source, str(output), "--config", config])
    assert f"1 missing, 0 unexpected, 0 misshapen: {DROPPED}" in err
    assert "--allow-partial" in err
    assert output.read_bytes() == b"previous version"
    assert sorted(os.listdir(tmp_path)) == before


def test_allowed_partial_conversion_and_failed_save(tmp_path, capsys, monkeypatch, fixture):
    """A save that dies half-way leaves OUTPUT as it was and no temporary file."""
    source, config = _write_inputs(tmp_path, fixture, drop=[DROPPED])
    output = tmp_path / "unet.keras"
    output.write_bytes(b"previous version")
    before = sorted(os.listdir(tmp_path))

    def failing_save(model, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(keras.saving, "save_model", failing_save)
    assert main(["unet", source, str(output), "--config", config, "--allow-partial"]) == 1
    printed, err = capsys.readouterr()
    assert err.strip() == "imagen-keras-convert: error: No space left on device"
    assert output.read_bytes() == b"previous version"
    assert sorted(os.listdir(tmp_path)) == before
    assert "missing from the state dict (1)" in printed and DROPPED in printed
    assert "Partial conversion: 1 Keras variables keep their initial values" in printed


def test_bad_input_errors(tmp_path, capsys, fixture):
    source, config = _write_inputs(tmp_path, fixture)
    output = str(tmp_path / "unet.keras")
    missing = str(tmp_path / "nowhere.pt")
    err = _main_error(capsys, ["unet", missing, output])
    assert f"No checkpoint file at {missing!r}" in err
    err = _main_error(capsys, ["unet", source, output])
    assert "plain state dict" in err and "pass --config" in err
    err = _main_error(capsys, ["unet", source, output, "--config", config, "--unet-index", "0"])
    assert "ImagenTrainer checkpoints only" in err
    err = _main_error(capsys, ["unet", source, str(tmp_path / "unet.h5"), "--config", config])
    assert "OUTPUT must end in .keras" in err
    err = _main_error(capsys, ["unet", source, str(tmp_path / "no" / "u.keras")])
    assert "No directory" in err
    err = _main_error(capsys, ["unet", source, output, "--config", str(tmp_path / "no.json")])
    assert "No config file at" in err
    (tmp_path / "bad.yaml").write_text("- just\n- a list\n")
    err = _main_error(capsys, ["unet", source, output, "--config", str(tmp_path / "bad.yaml")])
    assert "must hold a mapping" in err
    assert not os.path.exists(output)
    with pytest.raises(SystemExit) as info:  # argparse: usage errors exit with status 2
        main(["unet", source])
    assert info.value.code == 2
