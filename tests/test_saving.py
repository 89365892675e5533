"""Atomic saving (a killed or failed save keeps the old file) and damaged-file messages."""

import json
import os
import pathlib
import signal
import stat
import subprocess
import sys
import time
import warnings
import zipfile

import keras
import numpy as np
import pytest

import imagen_keras
from imagen_keras import Unet
from imagen_keras.saving import (
    AtomicSaveMixin,
    DamagedFileError,
    atomic_directory,
    atomic_path,
    atomic_write,
    load_model,
    remove_stale_temporaries,
    save_model,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
# A very small Unet: one level, no attention, no text; 87 variables (fast to initialise
# on JAX, where each new weight shape compiles its initializer).
SMALL = dict(
    dim=8,
    dim_mults=(1,),
    num_resnet_blocks=1,
    cond_on_text=False,
    layer_attns=False,
    layer_cross_attns=False,
    attn_pool_text=False,
    use_global_context_attn=False,
    attend_at_middle=False,
    init_cross_embed=False,
    final_resnet_block=False,
)


def temporaries(path):
    path = pathlib.Path(path)
    return sorted(p.name for p in path.parent.glob(f".{path.name}.*"))


def weights_of(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def assert_same_weights(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def unet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dim should ideally be at least 128"
        model = Unet(**SMALL, seed=3, name="unet")
    model.build((None, 16, 16, 3))  # symbolic: no slow eager first call on JAX
    bias = model.final_conv.bias
    bias.assign(keras.ops.convert_to_numpy(bias) + 0.25)
    return model


@pytest.fixture(scope="module")
def good_file(unet, tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "unet.keras"
    unet.save(path)
    return path


# ---------------------------------------------------------------- killed saves

_CHILD = """
import sys
import keras
from imagen_keras.saving import load_model

target, log = sys.argv[1:3]
model = load_model(target, compile=False)
base = keras.ops.convert_to_numpy(model.final_conv.bias)
for i in range(1, 100):
    model.final_conv.bias.assign(base + i)  # version i: bias + i
    model.save(target)
    with open(log, "a") as f:
        f.write(f"{i}\\n")
"""


def _tmp_size(folder, name):
    for entry in os.scandir(folder):
        if entry.name.startswith(f".{name}."):
            try:
                return entry.stat().st_size
            except FileNotFoundError:
                return None
    return None


def _should_kill(moment, folder, final_size, saves_done):
    size = _tmp_size(folder, "unet.keras")
    if moment == "created":  # the first save has just made its temporary file
        return size is not None
    # "grown": the second save has written part of its archive (the first one completed)
    return saves_done >= 1 and size is not None and 0 < size < final_size


def test_sigkill_during_save_keeps_a_loadable_file(unet, good_file, tmp_path):
    """Two processes save over a good file and are SIGKILLed at two moments mid-save."""
    moments = ("created", "grown")
    final_size = good_file.stat().st_size
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    runs = {}
    for moment in moments:
        folder = tmp_path / moment
        folder.mkdir()
        target = folder / "unet.keras"
        target.write_bytes(good_file.read_bytes())
        log = folder / "saves.log"
        out = open(folder / "child.out", "w")
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(target), str(log)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        runs[moment] = dict(folder=folder, target=target, log=log, child=child, out=out)

    deadline = time.monotonic() + 300
    pending = set(moments)
    try:
        while pending and time.monotonic() < deadline:
            for moment in sorted(pending):
                run = runs[moment]
                saves = len(run["log"].read_text().split()) if run["log"].exists() else 0
                if _should_kill(moment, run["folder"], final_size, saves):
                    run["temporary_at_kill"] = _tmp_size(run["folder"], "unet.keras")
                    run["child"].send_signal(signal.SIGKILL)
                    run["child"].wait()
                    pending.discard(moment)
                elif run["child"].poll() is not None:
                    pending.discard(moment)
            time.sleep(0.0005)
    finally:
        for run in runs.values():
            if run["child"].poll() is None:
                run["child"].kill()
                run["child"].wait()
            run["out"].close()

    base = weights_of(unet)
    bias_index = [w.path for w in unet.weights].index(unet.final_conv.bias.path)
    for moment in moments:
        run = runs[moment]
        output = (run["folder"] / "child.out").read_text()
        ended = run["child"].returncode
        assert ended == -signal.SIGKILL, f"{moment}: child ended by itself\n{output}"
        saves = run["saves"] = len(run["log"].read_text().split()) if run["log"].exists() else 0
        loaded = load_model(run["target"])
        assert isinstance(loaded, Unet)
        got = weights_of(loaded)
        version = got[bias_index] - base[bias_index]
        assert np.allclose(version, np.round(version[0]), atol=1e-6), version
        version = int(np.round(version[0]))
        # The version of the last completed save (the killed one never renamed its file).
        assert version == saves, (moment, version, saves)
        expected = list(base)
        expected[bias_index] = base[bias_index] + version
        for x, y in zip(got, expected):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
        assert run["temporary_at_kill"] is not None
        left = temporaries(run["target"])
        # The killed save's temporary file is still there: the kill landed mid-save.
        assert len(left) == 1, (moment, left, run["temporary_at_kill"])
    assert runs["created"]["saves"] == 0 and runs["grown"]["saves"] >= 1

    # The next save removes the temporary files the killed processes left behind.
    target = runs["created"]["target"]
    assert temporaries(target)
    unet.save(target)
    assert temporaries(target) == []
    assert remove_stale_temporaries(runs["grown"]["target"]) != []
    assert temporaries(runs["grown"]["target"]) == []


# ---------------------------------------------------------------- failed saves


@keras.saving.register_keras_serializable(package="imagen_keras_tests")
class FailingLayer(keras.layers.Dense):
    """Dense whose weights fail to save while `fail` is set (a full disk, a Ctrl-C)."""

    fail = None

    def save_own_variables(self, store):
        if FailingLayer.fail is not None:
            raise FailingLayer.fail
        super().save_own_variables(store)


@keras.saving.register_keras_serializable(package="imagen_keras_tests")
class AtomicSequential(AtomicSaveMixin, keras.Sequential):
    pass


@pytest.fixture
def failing_model():
    model = AtomicSequential([keras.Input((3,)), FailingLayer(2, name="dense")])
    yield model
    FailingLayer.fail = None


@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt()])
def test_failed_save_keeps_old_file(failing_model, tmp_path, error):
    path = tmp_path / "model.keras"
    failing_model.save(path)
    old = path.read_bytes()
    failing_model.layers[0].kernel.assign(np.ones((3, 2)))
    FailingLayer.fail = error
    with pytest.raises(type(error)):
        failing_model.save(path)
    assert path.read_bytes() == old
    assert temporaries(path) == []
    FailingLayer.fail = None
    loaded = load_model(path)
    assert not np.any(keras.ops.convert_to_numpy(loaded.layers[0].kernel) == 1.0)


def test_plain_keras_save_destroys_the_file_and_load_model_says_damaged(failing_model, tmp_path):
    """What the atomic writer prevents: Keras' own save leaves a damaged file behind."""
    path = tmp_path / "model.keras"
    failing_model.save(path)
    FailingLayer.fail = OSError("No space left on device")
    with pytest.raises(OSError):
        keras.Model.save(failing_model, path)
    FailingLayer.fail = None
    with pytest.raises(ValueError, match="is damaged .*missing model.weights.h5") as info:
        load_model(path)
    assert isinstance(info.value, DamagedFileError)


def test_save_weights_atomic_and_round_trip(failing_model, tmp_path):
    path = tmp_path / "model.weights.h5"
    failing_model.save_weights(path)
    old = path.read_bytes()
    FailingLayer.fail = OSError("disk full")
    with pytest.raises(OSError):
        failing_model.save_weights(path)
    assert path.read_bytes() == old and temporaries(path) == []
    FailingLayer.fail = None
    with pytest.raises(ValueError, match="max_shard_size"):
        failing_model.save_weights(tmp_path / "model.weights.json", max_shard_size=1)
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        failing_model.save_weights(tmp_path / "model.h5")


def test_unet_save_round_trip_and_save_weights(unet, good_file, tmp_path):
    loaded = imagen_keras.load_model(good_file)
    assert type(loaded) is Unet and loaded.get_config() == unet.get_config()
    assert_same_weights(weights_of(loaded), weights_of(unet))
    weights = tmp_path / "unet.weights.h5"
    unet.save_weights(weights)
    loaded.final_conv.bias.assign(np.zeros(3))
    loaded.load_weights(weights)
    assert_same_weights(weights_of(loaded), weights_of(unet))


def test_overwrite_false(unet, good_file, tmp_path):
    old = good_file.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=False"):
        unet.save(good_file, overwrite=False)
    assert good_file.read_bytes() == old
    weights = tmp_path / "unet.weights.h5"
    weights.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="overwrite=False"):
        unet.save_weights(weights, overwrite=False)
    assert weights.read_bytes() == b"old"
    fresh = tmp_path / "fresh.keras"
    unet.save(fresh, overwrite=False)
    assert zipfile.is_zipfile(fresh) and temporaries(fresh) == []


def test_save_argument_errors(unet, tmp_path):
    with pytest.raises(ValueError, match="zipped=False"):
        save_model(unet, tmp_path / "unet", zipped=False)
    with pytest.raises(ValueError, match=r"Received: filepath='.*unet\.txt'"):
        save_model(unet, tmp_path / "unet.txt")
    with pytest.raises(ValueError, match="filepath=None"):
        save_model(unet, None)
    with pytest.raises(FileNotFoundError, match="No folder"):
        save_model(unet, tmp_path / "missing" / "unet.keras")


# ---------------------------------------------------------------- loading


def _corrupt_member(data):
    middle = len(data) // 2
    flipped = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    return data[:middle] + flipped + data[middle + 64 :]


def _without_config(data):
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            if name != "config.json":
                dst.writestr(name, src.read(name))
    return out.getvalue()


@pytest.mark.parametrize(
    "damage, what",
    [
        (lambda d: d[: len(d) // 2], "not a valid .keras zip archive, or truncated"),
        (lambda d: d[:4096], "not a valid .keras zip archive, or truncated"),
        (lambda d: np.random.default_rng(0).bytes(5000), "not a valid .keras zip archive"),
        (lambda d: b"", "empty file"),
        (_without_config, "missing config.json"),
        (_corrupt_member, "corrupt member"),
    ],
    ids=["half", "4kb", "random", "empty", "no-config", "bad-crc"],
)
def test_damaged_file_message(good_file, tmp_path, damage, what):
    path = tmp_path / "unet.keras"
    path.write_bytes(damage(good_file.read_bytes()))
    with pytest.raises(ValueError, match="is damaged") as info:
        load_model(path)
    message = str(info.value)
    assert what in message and str(path) in message
    assert "File not found" not in message


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such file"):
        load_model(tmp_path / "absent.keras")


def test_safe_mode_refuses_lambda(tmp_path):
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2.0)(inputs))
    path = tmp_path / "lambda.keras"
    save_model(model, path)
    with pytest.raises(ValueError, match="safe_mode"):
        load_model(path)
    loaded = load_model(path, safe_mode=False)
    out = keras.ops.convert_to_numpy(loaded(np.ones((1, 2), "float32")))
    np.testing.assert_allclose(out, 2.0)
    with pytest.raises(ValueError, match="safe_mode='no'"):
        load_model(path, safe_mode="no")


# ---------------------------------------------------------------- atomic_write / atomic_path


def test_atomic_write_replaces_whole_file_or_nothing(tmp_path):
    path = tmp_path / "manifest.json"
    with atomic_write(path, "w") as f:
        json.dump({"rows_done": 1}, f)
    os.chmod(path, 0o640)
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_write(path, "w") as f:
            f.write('{"rows_do')
            raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"rows_done": 1}
    with atomic_write(path, "wb") as f:
        f.write(b'{"rows_done": 2}')
    assert json.loads(path.read_text()) == {"rows_done": 2}
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the replaced file's permissions
    assert temporaries(path) == []
    with pytest.raises(ValueError, match="mode='a'"):
        with atomic_write(path, "a"):
            pass


def test_atomic_path_keeps_suffix_for_writers_that_insist(tmp_path):
    path = tmp_path / "lengths.npy"
    with atomic_path(path) as tmp:
        assert tmp.endswith(".npy") and os.path.dirname(tmp) == str(tmp_path)
        np.save(tmp, np.arange(3))
    np.testing.assert_array_equal(np.load(path), np.arange(3))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_stale_temporaries_of_dead_processes_only(tmp_path):
    path = tmp_path / "unet.keras"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".unet.keras.{dead.pid}.0123abcd.tmp.keras"
    live = tmp_path / f".unet.keras.{os.getpid()}.4567abcd.tmp.keras"
    other = tmp_path / ".other.keras.1.0123abcd.tmp.keras"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    assert remove_stale_temporaries(path) == [str(stale)]
    assert live.exists() and other.exists()


def test_atomic_write_to_url_through_gfile():
    tf = pytest.importorskip("tensorflow")
    folder = f"ram://saving_test_{os.getpid()}"
    tf.io.gfile.makedirs(folder)
    path = f"{folder}/data.bin"
    with atomic_write(path) as f:
        f.write(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"new, half")
            raise RuntimeError("interrupted")
    with tf.io.gfile.GFile(path, "rb") as f:
        assert f.read() == b"old"
    assert tf.io.gfile.listdir(folder) == ["data.bin"]
    with pytest.raises(FileExistsError):
        with atomic_write(path, overwrite=False) as f:
            f.write(b"new")


def test_save_and_load_through_gfile_url(unet, good_file):
    tf = pytest.importorskip("tensorflow")
    folder = f"ram://saving_model_{os.getpid()}"
    tf.io.gfile.makedirs(folder)
    url = f"{folder}/unet.keras"
    unet.save(url)
    assert tf.io.gfile.listdir(folder) == ["unet.keras"]
    assert_same_weights(weights_of(load_model(url)), weights_of(unet))
    with tf.io.gfile.GFile(f"{folder}/half.keras", "wb") as f:
        f.write(good_file.read_bytes()[:4096])
    with pytest.raises(ValueError, match=r"half\.keras' is damaged"):
        load_model(f"{folder}/half.keras")
    with pytest.raises(FileNotFoundError):
        load_model(f"{folder}/absent.keras")


def test_cascades_save_atomically():
    assert imagen_keras.Imagen.save is AtomicSaveMixin.save
    assert imagen_keras.ElucidatedImagen.save_weights is AtomicSaveMixin.save_weights


# ---------------------------------------------------------------- atomic_directory (presets)


def _write_tree(folder, files):
    for name, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        pathlib.Path(folder, name).write_text(text)


def _read_tree(folder):
    folder = pathlib.Path(folder)
    return {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}


def test_atomic_directory_new_replace_and_failure(tmp_path):
    preset = tmp_path / "preset"
    v1 = {"config.json": "1", "assets/vocab.spm": "1"}
    v2 = {"config.json": "2", "assets/vocab.spm": "2", "model.weights.h5": "2"}
    with atomic_directory(preset) as tmp:
        assert not preset.exists()
        _write_tree(tmp, v1)
    assert _read_tree(preset) == v1
    with pytest.raises(RuntimeError):
        with atomic_directory(preset) as tmp:
            _write_tree(tmp, {"config.json": "half"})
            raise RuntimeError("interrupted")
    assert _read_tree(preset) == v1
    with atomic_directory(preset) as tmp:  # an earlier version: swapped as a whole
        _write_tree(tmp, v2)
    assert _read_tree(preset) == v2
    assert sorted(os.listdir(tmp_path)) == ["preset"]


def test_atomic_directory_keeps_other_files(tmp_path):
    folder = tmp_path / "mine"
    _write_tree(folder, {"notes.txt": "keep me", "config.json": "old"})
    with atomic_directory(folder) as tmp:
        _write_tree(tmp, {"config.json": "new"})
    assert _read_tree(folder) == {"notes.txt": "keep me", "config.json": "new"}
    assert sorted(os.listdir(tmp_path)) == ["mine"]


def test_atomic_directory_restores_an_interrupted_swap(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".preset.{dead.pid}.0123abcd.old"  # killed between the two renames
    _write_tree(aside, {"config.json": "good"})
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "preset"):
            raise RuntimeError("interrupted again")
    assert _read_tree(tmp_path / "preset") == {"config.json": "good"}
    assert sorted(os.listdir(tmp_path)) == ["preset"]
