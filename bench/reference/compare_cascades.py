#!/usr/bin/env python
"""Convert the reference's bench cascades with the `imagen` command and compare outputs.

Outside CI, with the imagen-pytorch reference: first write the cascades (imagen-pytorch
2.1.0, `ImagenTrainer.save` files with `imagen_type` / `imagen_params`, plus the
reference's recorded outputs) in the reference venv, then compare on each backend:

    source /tmp/imagen-pytorch-ref/env.sh
    python bench/reference/make_cascade_fixtures.py --bench /tmp/cascade_bench
    for b in jax tensorflow torch; do
        KERAS_BACKEND=$b .venv/bin/python bench/reference/compare_cascades.py \\
            /tmp/cascade_bench --out bench/results/convert_cascades_$b.json
    done

For each `<name>.pt`: `python -m imagen_keras.convert imagen <name>.pt <name>.keras`
(online weights), the `.keras` file loaded back, then (1) every stage's output through
the cascade's conditioning path with cond_scale 3 (Gaussian: unet output, thresholded
x0, posterior mean and log-variance; elucidated: preconditioned denoiser, plain and
thresholded) and (2) a whole `sample` call (cond_scale 3, both stages) with every random
draw replayed from the reference's; with EMA weights in the checkpoint, also (3) stage 1
with `--ema`. Errors are `max |keras - torch| / max(1, max |torch|)`; a sample's
tolerance is 1e-4, or twice the reference's own reproducibility (`sample.floor`, how far
its images move when its draws are perturbed by a relative 1e-7) where larger. The
elucidated reference sample conditions its super-resolution unet on the log-SNR of the
augmentation level, as its training and imagen-keras do (see make_cascade_fixtures.py).
Takes 3-6 minutes per backend on the shared 2-core CPU.
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

import keras

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from imagen_keras.convert import imagen_from_imagen_pytorch  # noqa: E402
from imagen_keras.convert.__main__ import main as convert_main  # noqa: E402
from tests.convert.test_convert_imagen import (  # noqa: E402
    check_samples,
    check_stages,
    load_outputs,
)


def compare(path):
    name = path.name[: -len(".pt")]
    reference = load_outputs(name, path.parent)
    result = {"name": name}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        output = pathlib.Path(tmp) / f"{name}.keras"
        if convert_main(["imagen", str(path), str(output)]) != 0:
            raise SystemExit(f"conversion of {path} failed")
        imagen = keras.saving.load_model(output)
    result["convert_s"] = round(time.perf_counter() - start, 1)
    result["class"] = type(imagen).__name__
    result["stages"] = check_stages(imagen, reference, "online")
    result["sample"] = check_samples(imagen, reference, "online")
    result["sample_floor"] = [float(f) for f in reference["sample.floor"]]
    if "stage0.ema_output.pred" in reference or "stage0.ema_output.denoised" in reference:
        ema = imagen_from_imagen_pytorch(path, use_ema=True)
        result["ema_stages"] = check_stages(ema, reference, "EMA", "ema_output", [0])
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, help="write the results as JSON")
    args = parser.parse_args()
    results = {"backend": keras.backend.backend(), "cascades": []}
    for path in sorted(args.directory.glob("*.pt")):
        result = compare(path)
        results["cascades"].append(result)
        print(json.dumps(result, indent=2))
    worst = max(
        err
        for r in results["cascades"]
        for key in ("stages", "sample", "ema_stages")
        for err in r.get(key, {}).values()
    )
    results["worst_error"] = worst
    print(f"{results['backend']}: all outputs matched; worst error {worst:.3g}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
