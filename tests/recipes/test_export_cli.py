"""Recipe run -> `imagen export` -> the SavedModel served by TensorFlow alone gives the
images `imagen` would (on torch the command exports through TensorFlow)."""

import numpy as np
import pytest

from imagen_keras.recipes import cli, load_recipe
from imagen_keras.recipes.runs import load_trained_cascade
from imagen_keras.recipes.train import run
from tests.recipes.test_train_cli import write_recipe
from tests.test_export import assert_same_images, serve_in_tensorflow_only
from tests.unet_helpers import to_numpy


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export_run")
    recipe = load_recipe(write_recipe(folder, steps=2, checkpoint_every=2, sample_every=None))
    run(recipe, output_dir=str(folder / "run"), verbose=False)
    return str(folder / "run")


def test_imagen_export_serves_what_the_run_samples(trained_run, tmp_path, capfd):
    out = tmp_path / "exported" / "1"
    assert cli.main(["export", "--model", trained_run, "--output", str(out)]) == 0
    assert "Exported" in capfd.readouterr().out  # (on torch, from the TF subprocess)

    cascade, _ = load_trained_cascade(trained_run)
    prompts = ["a red digit one", "a blue digit two"]
    embeds, masks = cascade.encode_text(prompts)
    # The recipe's `sample` section (DDIM, 3 steps) is the export's default sampler.
    expected = to_numpy(
        cascade.sample(
            texts=prompts, seed=[0, 1], cond_scale=3.0, sampler="ddim", ddim_steps=3, verbose=False
        )
    )
    request = {
        "text_embeds": "embeds",
        "text_masks": "masks",
        "seed": [0, 1],
        "cond_scale": 3.0,
        "num_steps": 0,
    }
    served, signature, _ = serve_in_tensorflow_only(
        tmp_path,
        out,
        {"embeds": np.asarray(embeds, "float32"), "masks": np.asarray(masks, bool)},
        {"request": request},
    )
    assert sorted(signature["inputs"]) == sorted(request)
    assert_same_images(served["request"], expected)

    # An existing folder is not replaced without --overwrite: one error line.
    assert cli.main(["export", "--model", trained_run, "--output", str(out)]) == 2
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "exists" in errors[0] and "overwrite" in errors[0], errors
