"""`set_cpu_xla_flags`: the training and sampling commands turn XLA's YNNPACK fusions off
for JAX on CPU (measured faster here, see its docstring), unless the user chose."""

import json
import os
import subprocess
import sys

import keras
import pytest

from imagen_keras.backend import YNN_FUSIONS_OFF, set_cpu_xla_flags

BACKEND = keras.backend.backend()

# In a fresh process: optionally call set_cpu_xla_flags, then compile a matmul + tanh and
# report whether XLA gave the matmul to YNNPACK.
COMPILE_A_MATMUL = """
import json, os, sys
from imagen_keras.backend import set_cpu_xla_flags
changed = set_cpu_xla_flags() if sys.argv[1] == "call" else None
import jax, jax.numpy as jnp
x = jnp.ones((64, 64))
text = jax.jit(lambda x, w: jnp.tanh(x @ w + 1.0)).lower(x, x).compile().as_text()
print(json.dumps({"changed": changed, "flags": os.environ.get("XLA_FLAGS", ""),
                  "ynn": "__ynn_fusion" in text}))
"""


def compile_in_a_process(call, xla_flags=None):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    result = subprocess.run(
        [sys.executable, "-c", COMPILE_A_MATMUL, "call" if call else "no"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(BACKEND != "jax", reason="XLA flags of the JAX backend")
def test_the_flag_takes_ynnpack_fusions_out_of_compiled_programs():
    before = compile_in_a_process(call=False)
    if not before["ynn"]:
        pytest.skip("this jaxlib's XLA makes no YNNPACK fusions: nothing to turn off")
    after = compile_in_a_process(call=True, xla_flags="--xla_cpu_use_thunk_runtime=true")
    assert after["changed"] is True
    assert after["flags"] == f"--xla_cpu_use_thunk_runtime=true {YNN_FUSIONS_OFF}"
    assert not after["ynn"]


@pytest.mark.skipif(BACKEND != "jax", reason="XLA flags of the JAX backend")
def test_the_users_own_setting_is_kept():
    own = "--xla_cpu_experimental_ynn_fusion_type="
    result = compile_in_a_process(call=True, xla_flags=own)
    assert result["changed"] is False and result["flags"] == own


@pytest.mark.skipif(BACKEND != "jax", reason="XLA flags of the JAX backend")
def test_nothing_changes_once_the_backend_has_started(monkeypatch):
    import jax.numpy as jnp

    float(jnp.ones(()))  # the CPU backend has read XLA_FLAGS now
    monkeypatch.setenv("XLA_FLAGS", "")
    assert set_cpu_xla_flags() is False
    assert os.environ["XLA_FLAGS"] == ""


@pytest.mark.skipif(BACKEND == "jax", reason="other backends")
def test_other_backends_leave_xla_flags_alone(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    assert set_cpu_xla_flags() is False
    assert os.environ["XLA_FLAGS"] == ""


@pytest.mark.skipif(BACKEND != "jax", reason="XLA flags of the JAX backend")
def test_the_training_command_turns_the_fusions_off():
    # A missing recipe ends the command early (exit 2), after it set its flags.
    script = (
        "import os\n"
        "from imagen_keras.recipes.train import main\n"
        "print(main(['--config', '/no/such/recipe.yaml']), os.environ.get('XLA_FLAGS'))\n"
    )
    env = dict(os.environ, KERAS_BACKEND=BACKEND, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == f"2 {YNN_FUSIONS_OFF}", result.stderr[-2000:]
