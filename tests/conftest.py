"""Shared pytest setup: offline environment, slow-test opt-in, seeded randomness."""

import os

# Tests never touch the network (keras-hub presets, tfds downloads).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KAGGLE_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No JAX compilation cache in ~/.cache from the commands tests run (in-process and in
# subprocesses); tests/test_compilation_cache.py turns it on in a folder of its own.
os.environ.setdefault("IMAGEN_KERAS_COMPILATION_CACHE", "")
# Tests run tiny models, where XLA's CPU compile time dominates: compile cheaply (about 2x
# faster JAX tests; numerics are unaffected).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)

import json  # noqa: E402
import pathlib  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from imagen_keras import Unet  # noqa: E402

DATA_DIR = pathlib.Path(__file__).parent / "data"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: pass --run-slow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def pytest_terminal_summary(terminalreporter):
    # The suite runs in groups partly to bound memory: show what this process peaked at.
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    terminalreporter.write_line(f"peak memory of this pytest process: {peak:.0f} MiB")


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _seed_everything():
    keras.utils.set_random_seed(0)
    yield


@pytest.fixture(scope="session")
def golden():
    """Exact values produced by imagen-pytorch 2.1.0 (see shared/reference/make_golden.py)."""
    with open(DATA_DIR / "imagen-pytorch-golden.json") as f:
        return json.load(f)


# ------------------------------------------------------------------ tiny cascades
# Shared by the cascade tests (Imagen, ElucidatedImagen, generation, errors, texts).

TEXT_DIM = 16
SIZES = (8, 16)
# Compile training steps on JAX (eager JAX is slow); graph/eager elsewhere compiles faster.
JIT = keras.backend.backend() == "jax"


def tiny_unet(**kwargs):
    """A dim-8 two-level Unet with attention at 8x8 (the smallest that exercises everything)."""
    config = dict(
        dim=8,
        dim_mults=(1, 2),
        attn_heads=2,
        attn_dim_head=8,
        max_text_len=4,
        attn_pool_num_latents=2,
        layer_attns=(False, True),
        layer_cross_attns=(False, True),
    )
    config.update(kwargs)
    return Unet(**config)


def colour_data(n=16, seed=0):
    """Red images for text A (+1 embeddings), blue ones for text B (-1 embeddings)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    embeds = np.where(labels[:, None, None] == 0, 1.0, -1.0) * np.ones((n, 3, TEXT_DIM))
    embeds = (embeds + 0.05 * rng.normal(size=embeds.shape)).astype("float32")
    red, blue = np.array([0.9, 0.1, 0.1]), np.array([0.1, 0.1, 0.9])
    colours = np.where(labels[:, None] == 0, red, blue)
    images = colours[:, None, None, :] + 0.03 * rng.normal(size=(n, SIZES[-1], SIZES[-1], 3))
    return np.clip(images, 0, 1).astype("float32"), embeds
