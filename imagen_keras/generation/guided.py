"""The guided network of a sampling stage: classifier-free guidance around a plain unet.

The unet only predicts. Here its conditioning is prepared once per stage, outside the
sampling loop (for guidance: doubled into conditional and null rows), and each loop step
runs the conditional and unconditional passes as one batch of `2 * batch` and combines
them with `diffusion.guidance.classifier_free_guidance`. `cond_scale` and
`keep_parallel_frac` may be tensors, so changing them does not retrace a compiled loop.

Reference: Ho & Salimans, "Classifier-Free Diffusion Guidance" (2022).
"""

from keras import ops

from imagen_keras.diffusion.guidance import classifier_free_guidance


def prepare_conditioning(conditioning, batch, guided):
    """The unet keyword arguments of a whole sampling stage.

    With `guided`, every tensor is repeated as `[cond rows; null rows]` and
    `text_keep_mask` keeps the text of the first half only (the null half sees the
    unet's learned null text), exactly once per stage.
    """
    conditioning = {k: v for k, v in conditioning.items() if v is not None}
    if not guided:
        return conditioning
    doubled = {k: ops.concatenate([v, v], axis=0) for k, v in conditioning.items()}
    doubled["text_keep_mask"] = ops.concatenate(
        [ops.ones((batch,), dtype="bool"), ops.zeros((batch,), dtype="bool")], axis=0
    )
    return doubled


def guided_network(
    unet,
    conditioning,
    *,
    guided,
    cond_scale=1.0,
    remove_parallel_component=True,
    keep_parallel_frac=0.0,
):
    """`net(x, noise_cond, self_cond=None)`: the unet's (guided) prediction.

    Args:
        unet: a `Unet`.
        conditioning: dict from `prepare_conditioning(..., guided)`.
        guided: bool. Run the conditional and null passes and combine them.
        cond_scale: float or scalar tensor. 1 gives the conditional prediction.
        remove_parallel_component: bool. Remove (all but `keep_parallel_frac` of) the
            guidance update's component parallel to the conditional prediction
            (Sadat et al. 2024).
        keep_parallel_frac: float or scalar tensor in [0, 1].
    """

    def net(x, noise_cond, self_cond=None):
        if not guided:
            return unet(x, noise_cond, self_cond=self_cond, **conditioning)
        batch = ops.shape(x)[0]
        twice = lambda t: None if t is None else ops.concatenate([t, t], axis=0)  # noqa: E731
        out = unet(twice(x), twice(noise_cond), self_cond=twice(self_cond), **conditioning)
        cond, null = out[:batch], out[batch:]
        return classifier_free_guidance(
            cond, null, cond_scale, remove_parallel_component, keep_parallel_frac
        )

    return net


def guided_call(
    unet,
    x,
    time,
    cond_scale=1.0,
    remove_parallel_component=True,
    keep_parallel_frac=0.0,
    **kwargs,
):
    """One classifier-free guided unet call (imagen-pytorch's `Unet.forward_with_cond_scale`).

    Args:
        unet: a `Unet`.
        x, time: the unet's inputs.
        cond_scale: float or scalar tensor, defaults to 1 (the conditional prediction).
        remove_parallel_component: bool, defaults to `True`.
        keep_parallel_frac: float, defaults to 0.
        **kwargs: the unet's conditioning (`text_embeds`, `text_mask`, `lowres_cond_img`,
            `lowres_noise_times`, `cond_images`, `self_cond`).

    Example:
    ```python
    guided = guided_call(unet, images, log_snr, cond_scale=5.0, text_embeds=embeds)
    ```
    """
    kwargs.pop("cond_drop_prob", None)
    self_cond = kwargs.pop("self_cond", None)
    if isinstance(cond_scale, (int, float)) and cond_scale == 1:
        return unet(x, time, self_cond=self_cond, **kwargs)
    batch = ops.shape(x)[0]
    net = guided_network(
        unet,
        prepare_conditioning(kwargs, batch, guided=True),
        guided=True,
        cond_scale=cond_scale,
        remove_parallel_component=remove_parallel_component,
        keep_parallel_frac=keep_parallel_frac,
    )
    return net(x, time, self_cond)
