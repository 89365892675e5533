"""Classifier-free guidance with parallel-component removal.

Reference: Ho & Salimans, "Classifier-Free Diffusion Guidance" (2022); the parallel
component removal follows Sadat et al., "Eliminating Oversaturation and Artifacts of
High Guidance Scales in Diffusion Models" (2024), as in imagen-pytorch 2.1.0.
"""

from keras import ops


def project(x, y):
    """Split `x` into the parts parallel and orthogonal to `y`, per sample.

    Both tensors are flattened over every axis but the first. imagen-pytorch computes
    this in float64; we compute in float32 on every backend (JAX disables float64 by
    default), which agrees with it to ~1e-6 relative.

    Returns:
        `(parallel, orthogonal)`, each with the shape and dtype of `x`.
    """
    x, y = ops.convert_to_tensor(x), ops.convert_to_tensor(y)
    dtype = x.dtype
    shape = ops.shape(x)
    xf = ops.reshape(ops.cast(x, "float32"), (shape[0], -1))
    yf = ops.reshape(ops.cast(y, "float32"), (shape[0], -1))
    unit = yf / ops.maximum(ops.norm(yf, axis=-1, keepdims=True), 1e-12)
    parallel = ops.sum(xf * unit, axis=-1, keepdims=True) * unit
    orthogonal = xf - parallel
    return (
        ops.cast(ops.reshape(parallel, shape), dtype),
        ops.cast(ops.reshape(orthogonal, shape), dtype),
    )


def classifier_free_guidance(
    cond, null, cond_scale, remove_parallel_component=True, keep_parallel_frac=0.0
):
    """Combine conditional and unconditional predictions.

    `out = cond + (cond - null) * (cond_scale - 1)`, where the update loses its component
    parallel to `cond` (all but `keep_parallel_frac` of it) when
    `remove_parallel_component` is true, exactly as imagen-pytorch's
    `Unet.forward_with_cond_scale`.
    """
    cond, null = ops.convert_to_tensor(cond), ops.convert_to_tensor(null)
    update = cond - null
    if remove_parallel_component:
        parallel, orthogonal = project(update, cond)
        update = orthogonal + parallel * keep_parallel_frac
    return cond + update * (cond_scale - 1.0)
