"""Training data as `tf.data` pipelines that the cascades' `fit` reads on every backend.

- `image_folder_dataset` / `ImageFolder`: images under a folder (imagen-pytorch's
  `Dataset`), captions from sidecar `.txt` files or a CSV/JSONL manifest; corrupt files
  are skipped and counted.
- `tfds_dataset`: a TensorFlow Datasets dataset by name; fails fast when not prepared.
- `demo_dataset`: coloured, captioned handwritten digits from scikit-learn (no download),
  with `demo_prompts` for a sample grid.
- `batch_and_prefetch`, `as_cascade_inputs`: batching and renaming for `fit`.

Elements are dicts: `"images"` float32 `(S, S, C)` in [0, 1] and, with captions, `"texts"`
(tf.string, T5-encoded by `fit`, or replaced by cached embeddings with
`EmbeddingCache.attach`).
"""

from imagen_keras.data.demo import (
    COLOUR_VALUES,
    DEMO_COLOURS,
    DIGIT_WORDS,
    demo_arrays,
    demo_caption,
    demo_dataset,
    demo_prompts,
)
from imagen_keras.data.image_folder import DEFAULT_EXTS, ImageFolder, image_folder_dataset
from imagen_keras.data.pipeline import as_cascade_inputs, batch_and_prefetch
from imagen_keras.data.tfds_datasets import tfds_dataset

__all__ = [
    "COLOUR_VALUES",
    "DEFAULT_EXTS",
    "DEMO_COLOURS",
    "DIGIT_WORDS",
    "ImageFolder",
    "as_cascade_inputs",
    "batch_and_prefetch",
    "demo_arrays",
    "demo_caption",
    "demo_dataset",
    "demo_prompts",
    "image_folder_dataset",
    "tfds_dataset",
]
