"""One sampling stage of a cascade as a pure function of tensors, compiled once.

`stage_function(cascade, index, structure)(inputs) -> images in [-1, 1]` samples stage
`index`. Only `structure` (what the trace depends on: guidance on or off, which optional
inputs are given, the sampler and its loop shape) is Python; every runtime setting is a
tensor in `inputs`, so a new `cond_scale`, seed, step count or batch of texts reuses the
compiled function:

- `seeds`: int32 `(batch,)`, one seed per image (see `diffusion.noise.per_sample_normal`).
- `cond_scale`, `keep_parallel_frac`, `lowres_noise_level`: float32 scalars.
- `num_steps`, `skip_steps`: int32 scalars; and the sampler's own scalars (e.g. EDM's
  `sigma_min`, `sigma_max`).
- Optional tensors (`None` when absent): `text_embeds`, `text_masks`, `cond_images`,
  `prev` (the previous stage's images in [0, 1]), `init` (init images in [-1, 1]),
  `inpaint` (known images in [-1, 1]) and `mask` (bool, True where known).

Within a stage, noise draw 0 is the initial noise, draw 1 the low-res augmentation noise
and draws 2, 3, ... the sampler's; stage `index` numbers its draws from
`index * DRAWS_PER_STAGE`. Image `i` depends only on `seeds[i]` and its own inputs.

This is the function that export and the command line call.
"""

import collections

from keras import ops

from imagen_keras.diffusion.gaussian import q_sample
from imagen_keras.diffusion.noise import per_sample_normal
from imagen_keras.diffusion.schedules import get_log_snr_fn
from imagen_keras.generation.guided import guided_network, prepare_conditioning
from imagen_keras.layers.sampling import resize_image_to

DRAWS_PER_STAGE = 1 << 20
INITIAL_DRAW, LOWRES_DRAW, FIRST_SAMPLER_DRAW = 0, 1, 2
OPTIONAL_INPUTS = ("text_embeds", "text_masks", "cond_images", "prev", "init", "inpaint", "mask")

StageStructure = collections.namedtuple(
    "StageStructure",
    ["guided", "remove_parallel_component", "resample_times", "sampler", "given"],
)
StageStructure.__doc__ = """What a compiled stage's trace depends on.

guided: bool, classifier-free guidance on (a doubled batch). remove_parallel_component:
bool. resample_times: int, RePaint resamplings (1 without inpainting). sampler: hashable
sampler settings of the cascade (e.g. `("ddim", eta)`). given: tuple of the optional
input names that are not `None`.
"""


def stage_conditioning(cascade, index, inputs, noise):
    """The unet's conditioning while sampling stage `index`: text, condition images,
    and for super-resolution stages the previous stage's output noised to the
    augmentation time `lowres_noise_level` (draw `LOWRES_DRAW`), with the same
    `lowres_noise_times = log_snr(level)` quantity as in training."""
    conditioning = {}
    if inputs.get("text_embeds") is not None:
        conditioning["text_embeds"] = inputs["text_embeds"]
        conditioning["text_mask"] = inputs.get("text_masks")
    if inputs.get("cond_images") is not None:
        conditioning["cond_images"] = inputs["cond_images"]
    if cascade.unets[index].lowres_cond:
        size = cascade.image_sizes[index]
        lowres_fn = get_log_snr_fn(cascade.lowres_noise_schedule)
        lowres = cascade.normalize_img(resize_image_to(inputs["prev"], size, cascade.resize_mode))
        batch = ops.shape(lowres)[0]
        level = ops.cast(inputs["lowres_noise_level"], "float32")
        aug_times = level * ops.ones((batch,), dtype="float32")
        conditioning["lowres_cond_img"], *_ = q_sample(
            lowres, aug_times, noise(LOWRES_DRAW), lowres_fn
        )
        conditioning["lowres_noise_times"] = lowres_fn(aug_times)
    return conditioning


def stage_function(cascade, index, structure):
    """`fn(inputs) -> images in [-1, 1]` for stage `index` (uncompiled; see
    `compiled_stage_function`). The known region of an inpainting is pasted."""
    unet = cascade.unets[index]
    size = cascade.image_sizes[index]

    def stage(inputs):
        # Python side effect: runs once per trace on the compiled backends.
        cascade._generation_traces += 1
        seeds = inputs["seeds"]
        batch = ops.shape(seeds)[0]
        shape = (batch, size, size, cascade.channels)
        base = index * DRAWS_PER_STAGE

        def noise(draw):
            return per_sample_normal(seeds, shape, base + draw)

        conditioning = stage_conditioning(cascade, index, inputs, noise)
        network = guided_network(
            unet,
            prepare_conditioning(conditioning, batch, structure.guided),
            guided=structure.guided,
            cond_scale=ops.cast(inputs["cond_scale"], "float32"),
            remove_parallel_component=structure.remove_parallel_component,
            keep_parallel_frac=ops.cast(inputs["keep_parallel_frac"], "float32"),
        )
        x = cascade._sample_stage(index, structure, network, noise, inputs)
        x = ops.clip(x, -1.0, 1.0)
        if inputs.get("inpaint") is not None:
            x = ops.where(inputs["mask"], inputs["inpaint"], x)
        return x

    return stage


def compiled_stage_function(cascade, index, structure):
    """`stage_function`, compiled for this backend and cached on the cascade."""
    from imagen_keras.backend import compile_inference_function

    key = (index, structure)
    if key not in cascade._stage_fns:
        cascade._stage_fns[key] = compile_inference_function(
            cascade, stage_function(cascade, index, structure)
        )
    return cascade._stage_fns[key]


def as_stage_inputs(inputs):
    """Runtime settings as backend tensors (Python numbers would be baked into a trace)."""
    out = {}
    for name, value in inputs.items():
        if value is None:
            out[name] = None
        elif name in ("seeds", "num_steps", "skip_steps"):
            out[name] = ops.convert_to_tensor(value, dtype="int32")
        elif name == "mask":
            out[name] = ops.cast(ops.convert_to_tensor(value), "bool")
        else:
            out[name] = ops.cast(ops.convert_to_tensor(value), "float32")
    return out


__all__ = [
    "DRAWS_PER_STAGE",
    "StageStructure",
    "as_stage_inputs",
    "compiled_stage_function",
    "stage_function",
]
