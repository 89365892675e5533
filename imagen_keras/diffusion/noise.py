"""Noise for generation: per-sample, counter-based, the same bits on every backend."""

import math

from keras import ops

# ---------------------------------------------------------------- per-sample noise
#
# Generation draws every image's noise from that image's own seed, so an image never
# depends on the batch it was drawn in (as EDM's `generate.py`, which seeds each image).
# `keras.random` cannot do this inside a compiled loop with a variable batch (it takes
# one int or generator per call), so the noise is a counter-based hash of
# (seed, draw, element): pure integer `keras.ops`, the same bits on every backend, no
# state, any batch size, and plain TensorFlow ops in an exported graph.

_GOLDEN = 0x9E3779B9 - 2**32  # int32 view of 2**32 / golden ratio
_MIX1 = 0x7FEB352D
_MIX2 = 0x846CA68B - 2**32


def _int32(value):
    return ops.convert_to_tensor(value, dtype="int32")


def _shift_right(x, bits):
    """Logical right shift of int32 bits (every backend shifts signed ints arithmetically)."""
    return ops.bitwise_and(ops.right_shift(x, bits), _int32((1 << (32 - bits)) - 1))


def _hash(x):
    """`lowbias32` (C. Wellons' integer hash) on int32 bits with wrapping products."""
    x = ops.bitwise_xor(x, _shift_right(x, 16))
    x = ops.multiply(x, _int32(_MIX1))
    x = ops.bitwise_xor(x, _shift_right(x, 15))
    x = ops.multiply(x, _int32(_MIX2))
    return ops.bitwise_xor(x, _shift_right(x, 16))


def seeds_to_int32(seeds):
    """Python/numpy seeds (any ints) as the int32 bit patterns `per_sample_normal` takes."""
    import numpy as np

    values = np.asarray(seeds, dtype=np.int64) & 0xFFFFFFFF
    return values.astype(np.uint32).view(np.int32)


def per_sample_normal(seeds, shape, draw):
    """Standard normal noise where sample `i` depends only on `seeds[i]` and `draw`.

    Counter-based: element `j` of draw `d` of sample `i` comes from two hashed uniforms
    of `(seeds[i], d, j)` through the Box-Muller transform. The bits are identical on
    every backend and every batch size.

    Args:
        seeds: int32 tensor `(batch,)` (see `seeds_to_int32` for Python ints).
        shape: `(batch, ...)`, the noise shape; `batch` may be a traced value.
        draw: int or int32 scalar tensor, the draw number (each use of noise in a
            sampler takes its own number).

    Returns:
        A float32 tensor of `shape`.
    """
    seeds = ops.cast(seeds, "int32")
    per_sample = 1
    for size in shape[1:]:
        per_sample *= int(size)
    draw_key = _hash(ops.add(ops.multiply(_int32(draw), _int32(_GOLDEN)), _int32(0x51ED27)))
    key = _hash(ops.bitwise_xor(_hash(seeds), draw_key))[:, None]
    counter = ops.arange(2 * per_sample, dtype="int32")[None, :]
    bits = _hash(ops.bitwise_xor(_hash(ops.add(counter, key)), key))
    uniform = (ops.cast(_shift_right(bits, 8), "float32") + 0.5) * (1.0 / (1 << 24))
    u1, u2 = uniform[:, :per_sample], uniform[:, per_sample:]
    normal = ops.sqrt(-2.0 * ops.log(u1)) * ops.cos((2.0 * math.pi) * u2)
    return ops.reshape(normal, (ops.shape(seeds)[0], *[int(s) for s in shape[1:]]))
