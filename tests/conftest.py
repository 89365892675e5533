"""Shared pytest setup: offline environment, slow-test opt-in, seeded randomness."""

import os

# Tests never touch the network (keras-hub presets, tfds downloads).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KAGGLE_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests run tiny models, where XLA's CPU compile time dominates: compile cheaply (about 2x
# faster JAX tests; numerics are unaffected).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)

import json  # noqa: E402
import pathlib  # noqa: E402

import keras  # noqa: E402
import pytest  # noqa: E402

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
