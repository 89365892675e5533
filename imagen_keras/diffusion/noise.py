"""Noise inside compiled loops: per-step seeds that work on every backend.

`keras.random` accepts only an int or a `SeedGenerator`, and a generator's state is a
variable that cannot be advanced inside a compiled loop body. Here a loop computes the
seed state of each draw (`initial_seed_state(seed) + step * [0, 1]`, what a
`SeedGenerator` would hold after `step` draws) and wraps it in a `StepSeed`.
"""

import numbers
import random

import keras
from keras import ops


def step_normal(shape, seed_state, step, dtype="float32"):
    """Standard normal noise for draw number `step` (an int or int tensor) of `seed_state`."""
    step_inc = ops.convert_to_tensor([0, 1], dtype=seed_state.dtype)
    state = seed_state + ops.cast(step, seed_state.dtype) * step_inc
    return keras.random.normal(shape, dtype=dtype, seed=StepSeed(state))


class StepSeed(keras.random.SeedGenerator):
    """A seed-generator stand-in holding a seed-state tensor computed inside a loop.

    `keras.random` functions accept only an int or a `SeedGenerator` and call its
    `next()`; a real generator's state is a variable, which cannot be advanced inside a
    compiled loop body. This subclass creates no variable and returns its tensor.
    """

    def __init__(self, state):
        # No super().__init__(): that would create the state variable.
        self._state = state

    def next(self, ordered=True):
        return self._state


def initial_seed_state(seed):
    """The seed state (a `(2,)` integer tensor) to start from, as `SeedGenerator` holds it."""
    if isinstance(seed, keras.random.SeedGenerator):
        return ops.convert_to_tensor(seed.state.value)
    if seed is None:
        # What keras.random.SeedGenerator(None) does: keras.utils.set_random_seed seeds it.
        seed = random.randint(1, 10**9)
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        # uint32 is what SeedGenerator uses on JAX and is accepted by every backend.
        return ops.convert_to_tensor([int(seed) & 0xFFFFFFFF, 0], dtype="uint32")
    raise ValueError(
        f"`seed` must be an int, a `keras.random.SeedGenerator` or None. Received: seed={seed!r}"
    )
