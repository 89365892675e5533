"""`bench/demo_quality.py` judges real demo images right and mislabelled ones wrong.

No model: the scorer itself is checked on the demo's own images (numpy and sklearn only).
"""

import importlib.util
import pathlib

import numpy as np

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"


def _load():
    spec = importlib.util.spec_from_file_location(
        "_imagen_bench_demo_quality", BENCH / "demo_quality.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scorer_accepts_true_captions_and_rejects_wrong_ones():
    from imagen_keras.data import DEMO_COLOURS, demo_arrays

    quality = _load()
    classifier, held_out = quality.digit_classifier(16)
    assert held_out > 0.9, held_out
    # Every digit in every colour (the classifier saw these digits' ink; `held_out`
    # above is its accuracy on unseen ones): checks colour, ink and label plumbing.
    arrays = demo_arrays(16, every_colour=True)
    pick = np.random.default_rng(1).choice(len(arrays["digits"]), 400, replace=False)
    images, colours, digits = (arrays[k][pick] for k in ("images", "colours", "digits"))
    colour_ok, digit_ok = quality.score(images, colours, digits, DEMO_COLOURS, classifier)
    assert colour_ok.all()
    assert digit_ok.mean() > 0.9, digit_ok.mean()
    # The same images with wrong captions: colour and digit are rejected.
    wrong_colours = (colours + 1) % len(DEMO_COLOURS)
    wrong_digits = (digits + 1) % 10
    colour_ok, digit_ok = quality.score(
        images, wrong_colours, wrong_digits, DEMO_COLOURS, classifier
    )
    assert not colour_ok.any()
    assert digit_ok.mean() < 0.1, digit_ok.mean()
