"""Mixed precision as a switch: Keras dtype policies on every layer of a cascade.

Keras runs mixed precision through dtype policies: `"mixed_bfloat16"` and
`"mixed_float16"` keep every weight in float32 and compute in the half type. The unets
take the policy as `dtype=` (or from `keras.config.set_dtype_policy` when they are
built); `set_precision` switches a model that already exists, in place: its weights stay
the same float32 variables, so optimizer states and EMA weights carry over.

What stays float32 whatever the policy: the weights, the time embedding's Fourier
features, the norms' statistics and the attention softmax, the unet's prediction and so
the whole diffusion (noise, schedules, loss, samplers, guidance, thresholding).

float16 needs loss scaling: a cascade compiled under `"mixed_float16"` wraps its stage's
optimizer in a `keras.optimizers.LossScaleOptimizer` (dynamic scale; a step whose scaled
gradients overflow is skipped and the scale halved), kept with the stage's optimizer
across `compile` calls and saved in checkpoints with it.
"""

import keras

_ALIASES = {
    None: "float32",
    "no": "float32",
    "fp32": "float32",
    "float32": "float32",
    "bf16": "mixed_bfloat16",
    "bfloat16": "mixed_bfloat16",
    "mixed_bfloat16": "mixed_bfloat16",
    "fp16": "mixed_float16",
    "float16": "mixed_float16",
    "mixed_float16": "mixed_float16",
}
PRECISIONS = tuple(name for name in _ALIASES if name is not None)


def precision_policy(precision):
    """The Keras dtype policy name of a precision: `"float32"`, `"mixed_bfloat16"` or
    `"mixed_float16"`.

    Args:
        precision: `None`/`"no"`/`"fp32"`/`"float32"` (full precision), `"bf16"`/
            `"bfloat16"`/`"mixed_bfloat16"`, or `"fp16"`/`"float16"`/`"mixed_float16"`
            (the names of imagen-pytorch's `precision` and Accelerate's
            `mixed_precision`, and Keras' policy names).
    """
    if not isinstance(precision, (str, type(None))) or precision not in _ALIASES:
        raise ValueError(
            f"`precision` must be one of {PRECISIONS} or None. Received: precision={precision!r}"
        )
    return _ALIASES[precision]


def model_precision(model):
    """The dtype policy name `model` computes with (that of its first unet for a cascade)."""
    unets = getattr(model, "unets", None)
    layer = unets[0] if unets else model
    return layer.dtype_policy.name


def set_precision(model, precision):
    """Switch `model` and every layer inside it to `precision`'s dtype policy, in place.

    Call it before `compile` (a cascade compiled before must be compiled again; its
    compiled sampling functions are dropped). The weights are not touched: a float32
    model keeps its float32 variables under the mixed policies.

    Args:
        model: a `keras.Layer` or `keras.Model` (an `Imagen`, `ElucidatedImagen` or `Unet`)
            whose weights are float32.
        precision: see `precision_policy`.

    Returns:
        The policy name now in force.

    Example:
    ```python
    set_precision(imagen, "bf16")
    imagen.compile(unet_number=1)  # computes in bfloat16, keeps float32 weights
    ```
    """
    name = precision_policy(precision)
    policy = keras.dtype_policies.get(name)
    wrong = sorted({v.dtype for v in model.weights if v.dtype not in ("float32", "int32", "int64")})
    if wrong:
        raise ValueError(
            f"`set_precision` switches float32 models only; this one has {wrong} weights "
            f"(dtype policy {model.dtype_policy.name!r}). Received: precision={precision!r}"
        )
    for layer in model._flatten_layers(include_self=True, recursive=True):
        layer.dtype_policy = policy
    stage_fns = getattr(model, "_stage_fns", None)
    if stage_fns is not None:
        stage_fns.clear()
    return name


def loss_scaled(optimizer, policy_name, **scaling):
    """`optimizer` wrapped in a `keras.optimizers.LossScaleOptimizer` (with `scaling`:
    `initial_scale`, `dynamic_growth_steps`) under `"mixed_float16"` if it is not one."""
    if policy_name == "mixed_float16" and not isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer
    ):
        return keras.optimizers.LossScaleOptimizer(optimizer, **scaling)
    return optimizer
