"""JAX's persistent compilation cache, which the training and sampling commands turn on.

A second process that builds the same model loads its compiled programs from the cache
(JAX counts these as cache hits) instead of compiling them again.
"""

import json
import os
import subprocess
import sys

import keras
import pytest

from imagen_keras.backend import enable_compilation_cache

BACKEND = keras.backend.backend()

# Builds a tiny unet (one initializer per weight shape) and runs it once; prints how
# many compiled programs came from the cache and how many were written to it.
BUILD_A_UNET = """
import json, os, jax, numpy as np
from imagen_keras.backend import enable_compilation_cache
from imagen_keras import Unet
events = {}
jax.monitoring.register_event_listener(
    lambda name, **kw: events.__setitem__(name, events.get(name, 0) + 1))
path = enable_compilation_cache()
unet = Unet(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=False,
            layer_cross_attns=False, cond_on_text=False, channels=3)
out = unet(np.zeros((1, 16, 16, 3), "float32"), np.zeros((1,), "float32"))
print(json.dumps({"path": path, "hits": events.get("/jax/compilation_cache/cache_hits", 0),
                  "misses": events.get("/jax/compilation_cache/cache_misses", 0)}))
"""


def build_in_a_process(cache):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, JAX_PLATFORMS="cpu")
    env["IMAGEN_KERAS_COMPILATION_CACHE"] = str(cache)
    result = subprocess.run(
        [sys.executable, "-c", BUILD_A_UNET], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(BACKEND != "jax", reason="a JAX cache")
def test_second_process_loads_the_compiled_programs(tmp_path):
    cache = tmp_path / "cache"
    first = build_in_a_process(cache)
    assert first["path"] == str(cache)
    assert first["hits"] == 0 and first["misses"] > 10, first
    assert len(os.listdir(cache)) > 10
    second = build_in_a_process(cache)
    # Everything the first process compiled comes from the cache now.
    assert second["hits"] >= first["misses"] and second["misses"] == 0, (first, second)


@pytest.mark.skipif(BACKEND != "jax", reason="a JAX cache")
def test_an_empty_variable_turns_the_cache_off(tmp_path):
    result = build_in_a_process("")
    assert result["path"] is None and result["hits"] == 0


@pytest.mark.skipif(BACKEND == "jax", reason="other backends")
def test_other_backends_have_no_cache(tmp_path):
    assert enable_compilation_cache(str(tmp_path / "cache")) is None
    assert not (tmp_path / "cache").exists()
