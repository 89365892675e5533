"""Write reference-Unet fixtures for the weight-conversion tests.

For each golden Unet config (`tests/data/imagen-pytorch-golden.json`, `unet_param_counts`)
plus two extra configs that cover the remaining options, this builds a randomly
initialised imagen-pytorch 2.1.0 `Unet`, makes its weights "strict" (every constant-
initialised tensor - norm gains, q/k scales, the zero final conv, the ICNR-repeated pixel
shuffle kernels - gets random values, so a swapped or ignored tensor changes the output),
rounds every weight to float16 precision (so they are stored exactly in half the space),
runs a forward pass on fixed inputs and writes

    tests/data/reference_unets/<name>.npz

with `param.<state-dict key>` (float16, torch layouts), `input.<name>` (float32, NCHW as
torch takes them), `output` (NCHW), optional `output_null` (cond_drop_prob=1) and
`output_cond_scale3` (forward_with_cond_scale(cond_scale=3)), `kwargs_json` (the Unet
kwargs) and `param_count` (the reference's parameter count). One config is also saved
with `Unet.persist_to_file` as `<name>.persisted.pt`.

Golden configs of more than ~0.5M parameters are shrunk (dim 8, cond_dim/text_embed_dim
32, 2 heads of 16) to keep the fixtures small (about 9 MB in all); every other argument
is kept, and the shrunk config's reference parameter count is recorded (the Keras test
checks it); unshrunk configs are asserted to have their golden count here.

Run with the imagen-pytorch reference venv (about 20 s on a 2-core CPU); the output is
deterministic:

    source /tmp/imagen-pytorch-ref/env.sh
    python bench/reference/make_unet_fixtures.py
"""

import json
import math
import pathlib

import numpy as np
import torch
from imagen_pytorch import Unet
from imagen_pytorch.imagen_pytorch import PixelShuffleUpsample

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "imagen-pytorch-golden.json"
OUT_DIR = ROOT / "tests" / "data" / "reference_unets"

IMAGE_SIZE = 16
BATCH = 2
TEXT_TOKENS = 6
MAX_FULL_SIZE_PARAMS = 500_000
SHRINK = dict(dim=8, attn_dim_head=16, attn_heads=2)

# Options the golden configs leave at their defaults.
EXTRA_CONFIGS = {
    "extras_combine_fmaps_cond_images": dict(
        dim=8,
        dim_mults=(1, 2),
        num_resnet_blocks=(1, 2),
        layer_attns=(False, True),
        layer_attns_depth=2,
        layer_mid_attns_depth=2,
        layer_cross_attns=(True, False),
        cond_dim=16,
        text_embed_dim=24,
        attn_heads=2,
        attn_dim_head=8,
        channels=4,
        channels_out=2,
        cond_images_channels=2,
        combine_upsample_fmaps=True,
        init_conv_to_final_conv_residual=True,
        scale_skip_connection=False,
        num_time_tokens=3,
        learned_sinu_pos_emb_dim=8,
        init_cross_embed_kernel_sizes=(7, 3),
        ff_mult=3.0,
        attn_pool_num_latents=5,
        lowres_cond=True,
    ),
    "extras_minimal_blocks": dict(
        dim=8,
        dim_mults=(1, 2, 2),
        init_dim=12,
        final_resnet_block=False,
        attend_at_middle=False,
        use_global_context_attn=False,
        attn_pool_text=False,
        max_text_len=4,
        layer_attns=(False, False, True),
        layer_cross_attns=False,
        use_linear_attn=(True, False, False),
        use_linear_cross_attn=(False, True, False),
        final_conv_kernel_size=1,
        init_cross_embed=False,
        init_conv_kernel_size=5,
        pixel_shuffle_upsample=False,
        text_embed_dim=16,
        cond_dim=16,
        attn_heads=2,
        attn_dim_head=8,
    ),
}

# Which fixtures also record guidance outputs.
NULL_TEXT_CONFIG = "tiny64_unet_te128"
COND_SCALE_CONFIG = "sr_unet_te128_lowres"
# Also saved with the reference's own `Unet.persist_to_file` (float16 tensors), to test
# reading real torch files and their `config`.
PERSISTED_CONFIG = "dim8_mults1111_rb1_noattn_te128"


def fixture_configs():
    with open(GOLDEN) as f:
        golden = json.load(f)["unet_param_counts"]
    configs = {}
    for name, entry in golden.items():
        kwargs, expected = dict(entry["kwargs"]), entry["params"]
        if expected > MAX_FULL_SIZE_PARAMS:
            expected = None
            kwargs.update(SHRINK)
            if "cond_dim" in kwargs:
                kwargs["cond_dim"] = 32
            if kwargs.get("text_embed_dim"):
                kwargs["text_embed_dim"] = 32
        configs[name] = (kwargs, expected)
    for name, kwargs in EXTRA_CONFIGS.items():
        configs[name] = (kwargs, None)
    return configs


@torch.no_grad()
def make_strict(unet, generator):
    """Randomise every constant-initialised tensor and round all weights to float16."""

    def randn(shape):
        return torch.randn(shape, generator=generator)

    for module in unet.modules():
        if isinstance(module, PixelShuffleUpsample):
            conv = module.net[0]
            bound = 1.0 / math.sqrt(conv.weight[0].numel())
            conv.weight.copy_((torch.rand(conv.weight.shape, generator=generator) * 2 - 1) * bound)
    for name, p in unet.named_parameters():
        flat = p.flatten()
        if bool((flat == flat[0]).all()):
            if name.startswith("final_conv"):
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(randn(p.shape) / math.sqrt(fan_in))
            elif float(flat[0]) == 0.0:
                p.copy_(0.1 * randn(p.shape))
            else:
                p.copy_(flat[0] * (1.0 + 0.2 * randn(p.shape)))
        p.copy_(p.half().float())


def make_inputs(unet, kwargs, generator):
    def randn(*shape):
        return torch.randn(shape, generator=generator)

    channels = kwargs.get("channels", 3)
    inputs = dict(
        x=randn(BATCH, channels, IMAGE_SIZE, IMAGE_SIZE),
        # log-SNR of t ~ U(0, 1) under the cosine schedule spans about [-15, 15].
        time=randn(BATCH) * 4.0,
    )
    if kwargs.get("cond_on_text", True):
        inputs["text_embeds"] = randn(BATCH, TEXT_TOKENS, kwargs["text_embed_dim"])
        inputs["text_mask"] = torch.tensor(
            [[True, True, True, True, False, False], [True, False, True, True, True, True]]
        )
    if kwargs.get("lowres_cond", False):
        inputs["lowres_cond_img"] = randn(BATCH, channels, IMAGE_SIZE, IMAGE_SIZE)
        inputs["lowres_noise_times"] = randn(BATCH) * 2.0
    if kwargs.get("self_cond", False):
        inputs["self_cond"] = randn(BATCH, channels, IMAGE_SIZE, IMAGE_SIZE)
    if kwargs.get("cond_images_channels", 0):
        size = IMAGE_SIZE // 2
        inputs["cond_images"] = randn(BATCH, kwargs["cond_images_channels"], size, size)
    return inputs


@torch.no_grad()
def make_fixture(name, kwargs, golden_params, seed):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    unet = Unet(**kwargs).eval()
    param_count = sum(p.numel() for p in unet.parameters())
    if golden_params is not None:
        assert param_count == golden_params, (name, param_count, golden_params)
    make_strict(unet, generator)
    inputs = make_inputs(unet, kwargs, generator)
    x, time = inputs["x"], inputs["time"]
    rest = {k: v for k, v in inputs.items() if k not in ("x", "time")}
    outputs = {"output": unet(x, time, **rest)}
    if name == NULL_TEXT_CONFIG:
        outputs["output_null"] = unet(x, time, cond_drop_prob=1.0, **rest)
    if name == COND_SCALE_CONFIG:
        outputs["output_cond_scale3"] = unet.forward_with_cond_scale(
            x, time, cond_scale=3.0, **rest
        )

    arrays = {}
    for key, value in unet.state_dict().items():
        arrays[f"param.{key}"] = value.numpy().astype(np.float16)
        assert np.array_equal(arrays[f"param.{key}"].astype(np.float32), value.numpy()), key
    for key, value in inputs.items():
        value = value.numpy()
        arrays[f"input.{key}"] = value if value.dtype == bool else value.astype(np.float32)
    for key, value in outputs.items():
        arrays[key] = value.numpy().astype(np.float32)
    arrays["kwargs_json"] = np.array(json.dumps(kwargs))
    arrays["param_count"] = np.array(param_count, dtype=np.int64)
    path = OUT_DIR / f"{name}.npz"
    np.savez_compressed(path, **arrays)
    if name == PERSISTED_CONFIG:
        unet.half().persist_to_file(OUT_DIR / f"{name}.persisted.pt")
    summary = ", ".join(f"{k} max|.|={float(v.abs().max()):.3g}" for k, v in outputs.items())
    print(f"{name}: {param_count:,} params, {path.stat().st_size / 1e6:.2f} MB, {summary}")


def main():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for seed, (name, (kwargs, golden_params)) in enumerate(sorted(fixture_configs().items())):
        make_fixture(name, kwargs, golden_params, seed)
    total = sum(p.stat().st_size for p in OUT_DIR.iterdir())
    print(f"total {total / 1e6:.2f} MB in {OUT_DIR}")


if __name__ == "__main__":
    main()
