"""The bench helpers are pure Python: override the root conftest's autouse seeding, which
calls `keras.utils.set_random_seed` and so starts the JAX or torch runtime (10+ s)."""

import pytest


@pytest.fixture(autouse=True)
def _seed_everything():
    yield
