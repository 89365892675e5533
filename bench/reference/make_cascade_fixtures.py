"""Write reference-cascade fixtures for the whole-cascade conversion tests.

Builds two small randomly initialised imagen-pytorch 2.1.0 cascades from the
reference's own config classes, as its users do (so the trainer checkpoint records
`imagen_type` and `imagen_params`):

- `imagen_8to16`: `ImagenConfig`, two unets (8 -> 16 px), per-unet timesteps, noise
  schedules ("cosine", "linear"), objectives ("noise", "v") and dynamic thresholding,
  a self-conditioned super-resolution unet left at `UnetConfig`'s attention defaults
  (16 heads of 32);
- `elucidated_8to16`: `ElucidatedImagenConfig`, two unets, per-unet EDM hyperparameters
  (S_churn 0: the Heun sampler is then deterministic given its initial noise).

The CI fixtures are saved without EMA weights, to keep them small (1.4 MB in all; the
tests exercise the EMA layout with derived weights); the `--bench` Imagen cascade
has EMA weights that differ from the online ones.

Every weight is made "strict" (constant-initialised tensors randomised, see
`make_unet_fixtures.py`) and rounded to float16 precision, then the cascade is saved
with the real `ImagenTrainer.save`. From that checkpoint this writes

    <out>/<name>.checkpoint.npz   the trainer checkpoint without optimizer states,
                                  flattened to name -> array (`model.<key>`,
                                  `ema.<key>`, `steps`, `version`, `imagen_type`,
                                  `imagen_params` as JSON): what
                                  `imagen_keras.convert.read_checkpoint` reads
                                  without torch;
    <out>/<name>.outputs.npz      inputs and the reference's outputs (NCHW):
        `text_embeds`, `text_masks`;
        per stage i, `stage{i}.input.*` and `stage{i}.output.*` through the cascade's
        own conditioning path with cond_scale 3: for Imagen `p_mean_variance` (raw unet
        output `pred`, thresholded `x_start`, posterior `mean` and `log_var`), for
        ElucidatedImagen `preconditioned_network_forward` (`denoised`, and the
        thresholded `denoised_clamped`); with EMA (`--bench`), stage 0 also with the
        EMA weights (`stage0.ema_output.*`);
        `sample.draw{k}`: every `torch.randn` / `torch.randn_like` draw of one
        `imagen.sample(text_embeds, text_masks, cond_scale=3)` call, in order, and
        `sample.stage{i}` its per-stage images in [0, 1]; `sample.floor`, per stage, the
        largest change of those images when every draw is perturbed by a relative 1e-7
        (float32 rounding), a measure of how exactly the sample can be reproduced at all
        (Heun's last 2nd-order correction divides by sigma_min = 0.002).

With `--bench DIR` it writes larger cascades (16 -> 32 px, more steps) to DIR instead,
each as the untouched `ImagenTrainer.save` file `<name>.pt` plus `<name>.outputs.npz`,
for `bench/reference/compare_cascades.py`.

ElucidatedImagen quirk: at sampling the reference feeds its super-resolution unet the raw
augmentation level (0.2) as `lowres_noise_times`, where training feeds the log-SNR of the
augmentation time; imagen-keras uses the log-SNR in both. The recorded elucidated
sample is made with the reference's `one_unet_sample` wrapped to pass the log-SNR too,
and the stage outputs are recorded with the log-SNR, so both sides condition the same
way; `sample_quirk.stage{i}` records the unpatched sample (same draws) for comparison.

Run with the imagen-pytorch reference venv (about 30 s on a 2-core CPU); the output is
deterministic:

    source /tmp/imagen-pytorch-ref/env.sh
    python bench/reference/make_cascade_fixtures.py
    python bench/reference/make_cascade_fixtures.py --bench /tmp/cascade_bench
"""

import argparse
import contextlib
import json
import pathlib
import sys
import tempfile

import numpy as np
import torch
from imagen_pytorch import ElucidatedImagen, ElucidatedImagenConfig, ImagenConfig, ImagenTrainer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_unet_fixtures import make_strict  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "tests" / "data" / "reference_cascades"
BATCH = 2
TEXT_TOKENS = 6
TEXT_EMBED_DIM = 16
COND_SCALE = 3.0


def cascades(bench=False):
    """name -> (config class, config kwargs, use_ema)."""
    dim, sizes = (16, (16, 32)) if bench else (8, (8, 16))
    mults = (1, 2, 2) if bench else (1, 2)
    attn = (False,) * (len(mults) - 1) + (True,)
    small_attn = dict(attn_heads=2, attn_dim_head=8)
    common = dict(dim=dim, dim_mults=mults, cond_dim=8, max_text_len=TEXT_TOKENS)
    base = dict(common, layer_attns=attn, layer_cross_attns=attn)
    sr = dict(common, layer_attns=False, layer_cross_attns=attn)
    imagen = dict(
        unets=[
            dict(base, **small_attn),
            # UnetConfig's attention defaults (16 heads of 32), unlike Unet's (8 of 64).
            dict(
                sr,
                self_cond=True,
                memory_efficient=True,
                attn_pool_text=False,
                layer_cross_attns=bench,
            ),
        ],
        image_sizes=sizes,
        timesteps=(12, 8) if bench else (4, 3),
        noise_schedules=("cosine", "linear"),
        pred_objectives=("noise", "v"),
        dynamic_thresholding=(True, False),
        lowres_sample_noise_level=0.15,
        text_embed_dim=TEXT_EMBED_DIM,
    )
    elucidated = dict(
        unets=[dict(base, **small_attn), dict(sr, **small_attn)],
        image_sizes=sizes,
        num_sample_steps=(8, 5) if bench else (3, 2),
        sigma_max=(80, 40),
        sigma_data=(0.5, 0.4),
        rho=(7, 5),
        S_churn=0,
        dynamic_thresholding=(False, True),
        text_embed_dim=TEXT_EMBED_DIM,
    )
    suffix = "16to32" if bench else "8to16"
    return {
        f"imagen_{suffix}": (ImagenConfig, imagen, bench),
        f"elucidated_{suffix}": (ElucidatedImagenConfig, elucidated, False),
    }


# ------------------------------------------------------------------ recording draws


class DrawRecorder:
    """Records every `torch.randn` / `torch.randn_like` draw while active."""

    def __init__(self):
        self.draws = []

    @contextlib.contextmanager
    def __call__(self):
        randn, randn_like = torch.randn, torch.randn_like

        def recorded(fn):
            def draw(*args, **kwargs):
                out = fn(*args, **kwargs)
                self.draws.append(out.detach().clone())
                return out

            return draw

        torch.randn, torch.randn_like = recorded(randn), recorded(randn_like)
        try:
            yield self
        finally:
            torch.randn, torch.randn_like = randn, randn_like


class DrawReplayer:
    """Replays recorded draws (in order) for `torch.randn` / `torch.randn_like`."""

    def __init__(self, draws):
        self.draws = list(draws)

    @contextlib.contextmanager
    def __call__(self):
        randn, randn_like = torch.randn, torch.randn_like
        queue = iter(self.draws)

        def replay(*args, **kwargs):
            return next(queue).clone()

        torch.randn, torch.randn_like = replay, replay
        try:
            yield self
        finally:
            torch.randn, torch.randn_like = randn, randn_like


@contextlib.contextmanager
def consistent_lowres_noise_times():
    """ElucidatedImagen.sample passes the raw augmentation level to the unet; make it pass
    the log-SNR of that level, as its training does (and as imagen-keras does)."""
    original = ElucidatedImagen.one_unet_sample

    def one_unet_sample(self, unet, shape, **kwargs):
        if kwargs.get("lowres_noise_times") is not None:
            times = kwargs["lowres_noise_times"]
            kwargs["lowres_noise_times"] = self.lowres_noise_schedule.get_condition(times)
        return original(self, unet, shape, **kwargs)

    ElucidatedImagen.one_unet_sample = one_unet_sample
    try:
        yield
    finally:
        ElucidatedImagen.one_unet_sample = original


# ------------------------------------------------------------------ stage outputs


def stage_inputs(imagen, index, generator, elucidated):
    size = imagen.image_sizes[index]

    def randn(*shape):
        return torch.randn(shape, generator=generator)

    inputs = dict(x=randn(BATCH, imagen.channels, size, size))
    if elucidated:
        inputs["sigma"] = torch.tensor([2.5, 0.3])
    else:
        inputs["t"] = torch.tensor([0.7, 0.35])
        inputs["t_next"] = torch.tensor([0.55, 0.2])
    if index > 0:
        inputs["lowres_cond_img"] = torch.rand(BATCH, imagen.channels, size, size) * 2 - 1
        inputs["lowres_noise"] = randn(BATCH, imagen.channels, size, size)
        inputs["aug_t"] = torch.tensor([0.2, 0.45])
    return inputs


@torch.no_grad()
def stage_outputs(imagen, index, inputs, text, elucidated):
    unet = imagen.unets[index]
    kwargs = dict(
        text_embeds=text["text_embeds"],
        text_mask=text["text_masks"],
        cond_scale=COND_SCALE,
        remove_parallel_component=True,
    )
    lowres_times = None
    if index > 0:
        schedule = imagen.lowres_noise_schedule
        kwargs["lowres_cond_img"], *_ = schedule.q_sample(
            inputs["lowres_cond_img"], t=inputs["aug_t"], noise=inputs["lowres_noise"]
        )
        lowres_times = inputs["aug_t"]
    if elucidated:
        hp = imagen.hparams[index]
        if lowres_times is not None:
            kwargs["lowres_noise_times"] = imagen.lowres_noise_schedule.get_condition(lowres_times)
        out = {}
        for name, clamp in (("denoised", False), ("denoised_clamped", True)):
            out[name] = imagen.preconditioned_network_forward(
                unet.forward_with_cond_scale,
                inputs["x"],
                inputs["sigma"],
                sigma_data=hp.sigma_data,
                clamp=clamp,
                dynamic_threshold=imagen.dynamic_thresholding[index],
                **kwargs,
            )
        return out
    kwargs.pop("remove_parallel_component")
    scheduler = imagen.noise_schedulers[index]
    pred = unet.forward_with_cond_scale(
        inputs["x"],
        scheduler.get_condition(inputs["t"]),
        lowres_noise_times=imagen.lowres_noise_schedule.get_condition(lowres_times),
        remove_parallel_component=True,
        **kwargs,
    )
    (mean, _, log_var), x_start = imagen.p_mean_variance(
        unet,
        x=inputs["x"],
        t=inputs["t"],
        t_next=inputs["t_next"],
        noise_scheduler=scheduler,
        lowres_noise_times=lowres_times,
        pred_objective=imagen.pred_objectives[index],
        dynamic_threshold=imagen.dynamic_thresholding[index],
        cfg_remove_parallel_component=True,
        model_output=pred,
        **kwargs,
    )
    return dict(pred=pred, x_start=x_start, mean=mean, log_var=log_var)


# ------------------------------------------------------------------ checkpoints


@torch.no_grad()
def build(name, config_class, config, use_ema, seed):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    imagen = config_class(**config).create().eval()
    for unet in imagen.unets:
        make_strict(unet, generator)
    trainer = ImagenTrainer(imagen, use_ema=use_ema, verbose=False)
    trainer.steps.copy_(torch.tensor([3 + seed, 5 + seed]))
    if use_ema:
        for ema in trainer.ema_unets:
            make_strict(ema.ema_model, generator)
            for p in ema.ema_model.parameters():  # EMA weights: online + small offsets
                p.add_(torch.randn(p.shape, generator=generator).half().float() * 0.01)
                p.copy_(p.half().float())
    return imagen, trainer, generator


def flatten_checkpoint(checkpoint):
    """A trainer checkpoint without optimizer states as a flat name -> numpy array dict."""
    flat = {}
    for entry in ("model", "ema"):
        for key, value in checkpoint.get(entry, {}).items():
            if ".online_model." in key:  # ema-pytorch's copy of the online weights
                continue
            array = value.numpy()
            if array.dtype == np.float32:
                assert np.array_equal(array.astype(np.float16).astype(np.float32), array), key
                array = array.astype(np.float16)
            flat[f"{entry}.{key}"] = array
    flat["steps"] = checkpoint["steps"].numpy()
    flat["version"] = np.array(checkpoint["version"])
    flat["imagen_type"] = np.array(checkpoint["imagen_type"])
    flat["imagen_params"] = np.array(json.dumps(checkpoint["imagen_params"]))
    return flat


@contextlib.contextmanager
def ema_weights(imagen, trainer, index):
    """Unet `index` of the cascade with its EMA weights (what `trainer.sample` uses)."""
    unet = imagen.unets[index]
    online = {k: v.clone() for k, v in unet.state_dict().items()}
    unet.load_state_dict(trainer.ema_unets[index].ema_model.state_dict())
    try:
        yield
    finally:
        unet.load_state_dict(online)


@torch.no_grad()
def make(name, config_class, config, use_ema, seed, out_dir, bench):
    imagen, trainer, generator = build(name, config_class, config, use_ema, seed)
    elucidated = config_class is ElucidatedImagenConfig
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(bench and out_dir or tmp) / f"{name}.pt"
        trainer.save(str(path))
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["imagen_type"] == ("elucidated" if elucidated else "original")

    text_embeds = torch.randn(BATCH, TEXT_TOKENS, TEXT_EMBED_DIM, generator=generator)
    text_masks = torch.tensor([[True] * 4 + [False] * 2, [True] * TEXT_TOKENS])
    text_embeds[0, 4:] = 0.0  # padding, as T5 gives
    text = dict(text_embeds=text_embeds, text_masks=text_masks)
    arrays = {k: v.numpy() for k, v in text.items()}
    for index in range(len(imagen.unets)):
        inputs = stage_inputs(imagen, index, generator, elucidated)
        arrays.update({f"stage{index}.input.{k}": v.numpy() for k, v in inputs.items()})
        outputs = stage_outputs(imagen, index, inputs, text, elucidated)
        arrays.update({f"stage{index}.output.{k}": v.numpy() for k, v in outputs.items()})
        if use_ema and index == 0:
            with ema_weights(imagen, trainer, index):
                outputs = stage_outputs(imagen, index, inputs, text, elucidated)
            arrays.update({f"stage{index}.ema_output.{k}": v.numpy() for k, v in outputs.items()})

    torch.manual_seed(1000 + seed)
    recorder = DrawRecorder()
    sample_kwargs = dict(
        text_embeds=text_embeds,
        text_masks=text_masks,
        cond_scale=COND_SCALE,
        return_all_unet_outputs=True,
        use_tqdm=False,
    )
    with recorder(), consistent_lowres_noise_times():
        samples = imagen.sample(**sample_kwargs)
    arrays.update({f"sample.draw{k}": d.numpy() for k, d in enumerate(recorder.draws)})
    arrays.update({f"sample.stage{i}": s.numpy() for i, s in enumerate(samples)})
    # The sample's own float32 sensitivity: the largest change per stage when every
    # draw is perturbed by a relative 1e-7 (float32 rounding), over two perturbations.
    floor = np.zeros(len(samples), np.float32)
    for _ in range(2):
        perturbed = [
            d * (1 + 1e-7 * torch.randn(d.shape, generator=generator)) for d in recorder.draws
        ]
        with DrawReplayer(perturbed)(), consistent_lowres_noise_times():
            moved = imagen.sample(**sample_kwargs)
        floor = np.maximum(floor, [float((a - b).abs().max()) for a, b in zip(samples, moved)])
    arrays["sample.floor"] = floor
    print(f"  sample sensitivity to 1e-7 relative noise changes: {floor}")
    if elucidated:
        with DrawReplayer(recorder.draws)():
            quirk = imagen.sample(**sample_kwargs)
        arrays.update({f"sample_quirk.stage{i}": s.numpy() for i, s in enumerate(quirk)})
        diff = max(float((a - b).abs().max()) for a, b in zip(samples, quirk))
        print(f"  reference quirk (raw lowres_noise_times) changes the sample by {diff:.3g}")

    arrays = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in arrays.items()}
    np.savez_compressed(out_dir / f"{name}.outputs.npz", **arrays)
    if not bench:
        np.savez_compressed(out_dir / f"{name}.checkpoint.npz", **flatten_checkpoint(checkpoint))
    params = [sum(p.numel() for p in u.parameters()) for u in imagen.unets]
    draws = [tuple(d.shape) for d in recorder.draws]
    print(f"{name}: unet params {params}, {len(draws)} sample draws, steps {checkpoint['steps']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", metavar="DIR", help="write larger bench cascades to DIR")
    args = parser.parse_args()
    bench = args.bench is not None
    out_dir = pathlib.Path(args.bench) if bench else OUT_DIR
    for seed, (name, (config_class, config, use_ema)) in enumerate(cascades(bench).items()):
        make(name, config_class, config, use_ema, seed, out_dir, bench)
    total = sum(p.stat().st_size for p in out_dir.iterdir())
    for p in sorted(out_dir.iterdir()):
        print(f"  {p.name}: {p.stat().st_size / 1e3:.0f} kB")
    print(f"total {total / 1e6:.2f} MB in {out_dir}")


if __name__ == "__main__":
    main()
