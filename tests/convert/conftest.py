"""Fixtures of the converter tests."""

import keras
import pytest


@pytest.fixture(scope="module", autouse=True)
def _fast_jax_compiles():
    """XLA's optimisation passes cost more than they save on these tiny unets (CPU)."""
    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
