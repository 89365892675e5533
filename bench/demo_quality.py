"""Score a trained demo run: does each sample have its caption's colour and digit?

```
python bench/demo_quality.py runs/demo [--seeds 4] [--cond-scale 3] [--json out.json]
```

Samples every prompt of the demo grid (4 colours x 10 digits) with `--seeds` seeds and
the run's sampler settings, then judges each image:

- colour: the ink-weighted mean colour of the image, nearest of the demo's palette;
- digit: a logistic-regression classifier trained on the demo's own images (ink as
  greyscale, so colour plays no part); on held-out demo images it is right ~95 % of the
  time (printed as `classifier_accuracy`), an upper bound for what it can confirm.

Prints one JSON object: accuracy of colour and digit overall, per colour and per digit.
A number, where the README's grid description is a person's count.
"""

import argparse
import json
import time

import numpy as np


def ink(images):
    """Greyscale ink of RGB images in [0, 1]: the brightest channel."""
    return np.asarray(images).max(axis=-1)


def digit_classifier(image_size, seed=0):
    """A classifier of demo digits from their ink, and its held-out accuracy."""
    from sklearn.linear_model import LogisticRegression

    from imagen_keras.data import demo_arrays

    arrays = demo_arrays(image_size, every_colour=False, seed=seed)
    x = ink(arrays["images"]).reshape(len(arrays["digits"]), -1)
    y = np.asarray(arrays["digits"])
    order = np.random.default_rng(seed).permutation(len(y))
    held_out, train = order[:300], order[300:]
    classifier = LogisticRegression(max_iter=2000, C=0.5).fit(x[train], y[train])
    accuracy = float((classifier.predict(x[held_out]) == y[held_out]).mean())
    classifier.fit(x, y)
    return classifier, accuracy


def nearest_colour(images, colours):
    """Index into `colours` of each image's ink-weighted mean colour."""
    from imagen_keras.data.demo import COLOUR_VALUES

    images = np.asarray(images)
    weight = ink(images)[..., None]
    mean = (images * weight).sum(axis=(1, 2)) / np.maximum(weight.sum(axis=(1, 2)), 1e-6)
    mean = mean / np.maximum(mean.max(axis=-1, keepdims=True), 1e-6)
    palette = np.array([COLOUR_VALUES[c] for c in colours])
    distance = ((mean[:, None, :] - palette[None]) ** 2).sum(-1)
    return distance.argmin(-1)


def score(images, colour_index, digits, colours, classifier):
    """Per-image booleans: right colour, right digit."""
    images = np.asarray(images, "float32")
    colour_ok = nearest_colour(images, colours) == np.asarray(colour_index)
    predicted = classifier.predict(ink(images).reshape(len(images), -1))
    digit_ok = predicted == np.asarray(digits)
    return colour_ok, digit_ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="run folder or checkpoint of a demo recipe")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--cond-scale", type=float, default=None)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)

    from imagen_keras.data import DEMO_COLOURS
    from imagen_keras.data.demo import demo_prompts
    from imagen_keras.recipes.runs import load_trained_cascade
    from imagen_keras.training.checkpoint import checkpoint_metadata

    cascade, checkpoint = load_trained_cascade(args.run)
    recipe = (checkpoint_metadata(checkpoint).get("extra") or {}).get("recipe") or {}
    sample = recipe.get("sample") or {}
    options = {"cond_scale": sample.get("cond_scale", 3.0)}
    if sample.get("sampler"):
        options["sampler"] = sample["sampler"]
    if sample.get("sampler") == "ddim" and sample.get("ddim_steps"):
        options["ddim_steps"] = sample["ddim_steps"]
    if args.cond_scale is not None:
        options["cond_scale"] = args.cond_scale
    colours = DEMO_COLOURS
    prompts = demo_prompts(colours)
    colour_index = np.repeat(np.arange(len(colours)), 10)
    digits = np.tile(np.arange(10), len(colours))
    classifier, classifier_accuracy = digit_classifier(cascade.image_sizes[-1])

    start = time.time()
    colour_ok, digit_ok = [], []
    for s in range(args.seeds):
        seeds = [s * len(prompts) + i for i in range(len(prompts))]
        images = cascade.sample(texts=prompts, seed=seeds, verbose=False, **options)
        c, d = score(np.asarray(images), colour_index, digits, colours, classifier)
        colour_ok.append(c)
        digit_ok.append(d)
    colour_ok, digit_ok = np.stack(colour_ok), np.stack(digit_ok)  # (seeds, 40)
    result = {
        "run": args.run,
        "checkpoint": checkpoint,
        "samples": int(colour_ok.size),
        "sample_options": {k: v for k, v in options.items() if np.isscalar(v)},
        "colour_accuracy": float(colour_ok.mean()),
        "digit_accuracy": float(digit_ok.mean()),
        "both_accuracy": float((colour_ok & digit_ok).mean()),
        "digit_accuracy_per_colour": {
            c: float(digit_ok[:, colour_index == i].mean()) for i, c in enumerate(colours)
        },
        "digit_accuracy_per_digit": [float(digit_ok[:, digits == d].mean()) for d in range(10)],
        "classifier_accuracy": classifier_accuracy,
        "sampling_seconds": round(time.time() - start, 1),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
