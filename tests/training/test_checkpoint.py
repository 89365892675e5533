"""Checkpoints: exact resumption in a fresh process, rebuild from the file, refusals."""

import json
import os
import pathlib
import subprocess
import sys
import warnings
import zipfile

import keras
import numpy as np
import pytest

from imagen_keras.saving import DamagedFileError
from imagen_keras.training import (
    CheckpointManager,
    checkpoint_metadata,
    load_checkpoint,
    load_imagen_from_checkpoint,
    save_checkpoint,
)
from imagen_keras.training.ema import ema_pairs
from tests.conftest import colour_data
from tests.training.conftest import (
    COMPILE,
    fast_ema_optimizer,
    small_cascade,
    small_unet,
    to_numpy,
)

REPO = pathlib.Path(__file__).resolve().parents[2]


def child_env(**extra):
    """The environment of a child Python: this repository importable, same backend."""
    path = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return dict(os.environ, PYTHONPATH=path, **extra)


def snapshot(imagen):
    return {
        "weights": to_numpy(imagen.weights),
        "optimizers": [to_numpy(o.variables) for o in imagen.stage_optimizers.optimizers],
        "steps": imagen.stage_optimizers.steps(),
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Stage 1 trained 2 updates, stage 2 one update (each its own EMA optimizer), saved."""
    imagen = small_cascade()
    images, embeds = colour_data(4)
    data = {"images": images, "text_embeds": embeds}
    imagen.compile(optimizer=fast_ema_optimizer(), unet_number=1, **COMPILE)
    for _ in range(2):
        imagen.train_on_batch(data)
    imagen.compile(optimizer=fast_ema_optimizer(), unet_number=2, **COMPILE)
    imagen.train_on_batch(data)
    folder = tmp_path_factory.mktemp("checkpoint")
    path = save_checkpoint(imagen, str(folder / "checkpoint.zip"), extra={"recipe": "tiny"})
    return imagen, path, data, snapshot(imagen)


def assert_same_state(imagen, expected):
    for got, want in zip(to_numpy(imagen.weights), expected["weights"]):
        np.testing.assert_array_equal(got, want)
    for optimizer, want in zip(imagen.stage_optimizers.optimizers, expected["optimizers"]):
        got = to_numpy(optimizer.variables)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    assert imagen.stage_optimizers.steps() == expected["steps"]


def test_rebuild_from_the_file_and_restore_in_place(trained):
    _, path, _, expected = trained
    meta = checkpoint_metadata(path)
    assert meta["extra"] == {"recipe": "tiny"}
    assert meta["num_steps_taken"] == [2, 1] and meta["unet_train_steps"] == [2, 1]
    rebuilt = load_checkpoint(path)
    assert_same_state(rebuilt, expected)
    # The optimizers are the ones `compile` picks up, trained on the unets' variables.
    rebuilt.compile(unet_number=1, **COMPILE)
    assert rebuilt.optimizer is rebuilt.stage_optimizers.get(0)
    pairs = ema_pairs(rebuilt.unets[0], rebuilt.optimizer)
    assert len(pairs) == len(rebuilt.unets[0].trainable_weights)

    fresh = small_cascade()
    fresh.compile(optimizer=fast_ema_optimizer(lr=0.5), unet_number=1, **COMPILE)
    assert load_checkpoint(path, fresh) is fresh
    assert_same_state(fresh, expected)
    # `fit` would have used the replaced optimizer: the stage was compiled again.
    assert fresh.optimizer is fresh.stage_optimizers.get(0)
    assert float(to_numpy([fresh.optimizer.learning_rate])[0]) == pytest.approx(1e-3)
    # A checkpoint without optimizer state restores the weights only.
    weights_only = save_checkpoint(fresh, path + ".weights.zip", include_optimizers=False)
    assert checkpoint_metadata(weights_only)["stages"][0]["variables"] is None
    assert load_checkpoint(weights_only).stage_optimizers.steps() == [0, 0]


CHILD_RESUME = r"""
import json, sys
import keras
import numpy as np
from imagen_keras.training import load_checkpoint
from tests.training.conftest import COMPILE

path, data_path = sys.argv[1:3]
data = dict(np.load(data_path))
imagen = load_checkpoint(path)  # rebuilt from the file alone
imagen.compile(unet_number=2, **COMPILE)
losses = [float(imagen.train_on_batch(data)) for _ in range(2)]
steps = [int(s) for s in keras.ops.convert_to_numpy(imagen.unet_train_steps)]
print("RESULT " + json.dumps(
    {"losses": losses, "steps": imagen.stage_optimizers.steps(), "unet_train_steps": steps}
))
"""


def test_resume_in_a_fresh_process_continues_identically(trained, tmp_path):
    imagen, path, data, _ = trained
    np.savez(tmp_path / "data.npz", **data)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_RESUME, path, str(tmp_path / "data.npz")],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # The uninterrupted run continues meanwhile (the child starts from the file).
    losses = [float(imagen.train_on_batch(data)) for _ in range(2)]
    output, _ = child.communicate(timeout=600)
    assert child.returncode == 0, output[-3000:]
    result = json.loads(output.split("RESULT ", 1)[1].splitlines()[0])
    assert result["steps"] == imagen.stage_optimizers.steps() == [2, 3]
    assert result["unet_train_steps"] == [2, 3]
    # Same seed state, optimizer moments and EMA: the same losses.
    np.testing.assert_allclose(result["losses"], losses, rtol=1e-6, atol=1e-7)
    assert losses[0] != losses[1]


def test_config_mismatch_names_it(trained):
    _, path, _, _ = trained
    other = small_cascade(image_sizes=(8, 32))
    with pytest.raises(ValueError, match=r"image_sizes: checkpoint \[8, 16\], model \[8, 32\]"):
        load_checkpoint(path, other)
    wider = small_cascade([small_unet(), small_unet(dim=8)])
    with pytest.raises(ValueError, match=r"unets\[1\]\.dim: checkpoint 4, model 8"):
        load_checkpoint(path, wider)
    # `only_train_unet_number` may differ (one process per unet, as in imagen-pytorch).
    load_checkpoint(path, small_cascade(only_train_unet_number=2), include_optimizers=False)


def _rewrite(source, target, replace):
    """Copy the checkpoint zip `source` to `target` with some members replaced."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            if name not in replace:
                new.writestr(name, old.read(name))
        for name, content in replace.items():
            if content is not None:
                new.writestr(name, content)
    return str(target)


class _Payload:
    """Unpickling this creates a folder: the proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_malicious_checkpoints_are_refused(trained, tmp_path):
    _, path, _, _ = trained
    marker = tmp_path / "pwned"
    payload = tmp_path / "payload.npz"
    with zipfile.ZipFile(path) as zf:
        arrays = dict(np.load(zf.open("optimizers.npz")))
    arrays["stage1_0"] = np.array([_Payload(str(marker))], dtype=object)
    np.savez(payload, **arrays)
    pickled = _rewrite(path, tmp_path / "pickled.zip", {"optimizers.npz": payload.read_bytes()})
    with pytest.raises(ValueError, match="pickled object array"):
        load_checkpoint(pickled)
    assert not marker.exists()

    lambda_model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda x: x * 2)])
    lambda_model.save(tmp_path / "lambda.keras")
    lambdas = _rewrite(
        path, tmp_path / "lambda.zip", {"model.keras": (tmp_path / "lambda.keras").read_bytes()}
    )
    with pytest.raises(ValueError, match="Lambda"):
        load_checkpoint(lambdas)

    meta = json.loads(zipfile.ZipFile(path).read("meta.json"))
    meta["stages"][0]["config"] = {"module": "os", "class_name": "system", "config": "touch x"}
    code = _rewrite(path, tmp_path / "code.zip", {"meta.json": json.dumps(meta)})
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        load_checkpoint(code)

    extra_member = _rewrite(path, tmp_path / "extra.zip", {"payload.pkl": b"\x80\x04."})
    with pytest.raises(ValueError, match=r"unexpected members \['payload.pkl'\]"):
        load_checkpoint(extra_member)


def test_damaged_and_missing_files(trained, tmp_path):
    imagen, path, _, _ = trained
    data = pathlib.Path(path).read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    missing_model = _rewrite(path, tmp_path / "no_model.zip", {"model.keras": None})
    for damaged, what in [(truncated, "truncated"), (empty, "0 bytes"), (missing_model, "missing")]:
        with pytest.raises(DamagedFileError, match=what):
            load_checkpoint(str(damaged), imagen)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "nothing.zip"))
    with pytest.raises(ValueError, match="JSON-serializable"):
        save_checkpoint(imagen, str(tmp_path / "x.zip"), extra={"f": object()})


def test_manager_keeps_the_last_n_and_skips_damaged_files(trained, tmp_path):
    imagen, _, _, _ = trained
    manager = CheckpointManager(str(tmp_path / "run"), max_to_keep=2)
    assert manager.latest() is None and manager.restore_latest(imagen) is None
    for step in (1, 2, 3):
        manager.save(imagen, step)
    assert [s for s, _ in manager.checkpoints()] == [2, 3]
    # A stale temporary file of a killed save (dead pid) goes at the next save.
    stale = tmp_path / "run" / ".checkpoint.4.zip.999999999.0123abcd.tmp.zip"
    stale.write_bytes(b"partial")
    # A newer but damaged checkpoint (e.g. a copy cut short) is skipped.
    newest = tmp_path / "run" / "checkpoint.9.zip"
    newest.write_bytes(pathlib.Path(manager.path_for(3)).read_bytes()[:1000])
    with pytest.warns(UserWarning, match="Skipping a damaged checkpoint"):
        assert manager.latest() == manager.path_for(3)
    with pytest.warns(UserWarning, match="checkpoint.9.zip"):
        assert manager.restore_latest(imagen) == manager.path_for(3)
    manager.save(imagen, 4)
    assert not stale.exists()
    assert [s for s, _ in manager.checkpoints()] == [4, 9]
    for _, file in manager.checkpoints():
        pathlib.Path(file).write_bytes(b"junk")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DamagedFileError, match="None of the 2 checkpoints"):
            manager.restore_latest(imagen)


def test_checkpoints_through_a_gfile_url(trained):
    imagen, _, _, _ = trained
    manager = CheckpointManager("ram://imagen_run/checkpoints", max_to_keep=1)
    manager.save(imagen, 5, extra={"where": "ram"})
    manager.save(imagen, 6)
    assert manager.checkpoints() == [(6, "ram://imagen_run/checkpoints/checkpoint.6.zip")]
    assert (
        checkpoint_metadata(manager.latest())["num_steps_taken"] == imagen.stage_optimizers.steps()
    )
    fresh = small_cascade()
    assert manager.restore_latest(fresh) == manager.latest()
    assert fresh.stage_optimizers.steps() == imagen.stage_optimizers.steps()


def test_load_imagen_from_checkpoint(trained):
    _, path, _, expected = trained
    online = load_imagen_from_checkpoint(path)
    assert online.stage_optimizers.optimizers == [None, None]
    for got, want in zip(to_numpy(online.weights), expected["weights"]):
        np.testing.assert_array_equal(got, want)
    ema = load_imagen_from_checkpoint(path, load_ema_if_available=True)
    reference = load_checkpoint(path)
    for unet, ema_unet, optimizer in zip(
        reference.unets, ema.unets, reference.stage_optimizers.optimizers
    ):
        averages = {id(v): a for v, a in ema_pairs(unet, optimizer)}
        assert len(averages) == len(optimizer.inner_optimizer._trainable_variables) > 0
        for variable, got in zip(unet.weights, ema_unet.weights):
            want = averages.get(id(variable), variable)  # non-trainable weights: as saved
            np.testing.assert_array_equal(to_numpy([got])[0], to_numpy([want])[0])
    # The EMA really differs from the online weights after 2 updates of stage 1.
    first = [to_numpy(m.unets[0].weights) for m in (ema, online)]
    assert any(not np.array_equal(a, b) for a, b in zip(*first))
    untrained = load_imagen_from_checkpoint(path, load_weights=False)
    assert untrained.get_config()["image_sizes"] == [8, 16]
    assert not np.array_equal(
        to_numpy(untrained.unets[0].weights)[0], to_numpy(online.unets[0].weights)[0]
    )


def test_elucidated_cascade_round_trip(tmp_path):
    from imagen_keras import ElucidatedImagen
    from tests.conftest import SIZES, TEXT_DIM

    imagen = ElucidatedImagen(
        [small_unet(), small_unet()], image_sizes=SIZES, text_embed_dim=TEXT_DIM, sigma_max=20
    )
    imagen.build()
    path = save_checkpoint(imagen, str(tmp_path / "edm.zip"))
    rebuilt = load_checkpoint(path)
    assert type(rebuilt) is ElucidatedImagen and rebuilt.get_config()["sigma_max"] == [20, 20]
    for a, b in zip(to_numpy(rebuilt.weights), to_numpy(imagen.weights)):
        np.testing.assert_array_equal(a, b)
