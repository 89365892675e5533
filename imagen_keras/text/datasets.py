"""Replace the captions of training data by T5 embeddings, outside the compiled train step.

`Cascade.fit` calls `encode_texts_in_data` when its data carries a "texts" key: T5 runs
eagerly (a compiled JAX or XLA step cannot hold strings), once per batch, as
imagen-pytorch encodes captions in its forward pass. To encode each caption only once
for a whole training run, build an `EmbeddingCache` and attach it to the dataset instead.
"""

import numpy as np

TEXTS_KEY = "texts"


def _encode_arrays(data, encode, batch_size):
    texts = data[TEXTS_KEY]
    texts = [t.decode() if isinstance(t, bytes) else str(t) for t in np.asarray(texts).tolist()]
    embeds, masks = [], []
    for start in range(0, len(texts), batch_size):
        e, m = encode(texts[start : start + batch_size])
        embeds.append(e)
        masks.append(m)
    out = {k: v for k, v in data.items() if k != TEXTS_KEY}
    out["text_embeds"] = np.concatenate(embeds, axis=0)
    out["text_masks"] = np.concatenate(masks, axis=0).astype("float32")  # see _encode_dataset
    return out


def _encode_dataset(dataset, encode, embed_dim, length):
    import tensorflow as tf

    def encode_batch(texts):
        texts = [t.decode() for t in texts.numpy().reshape(-1).tolist()]
        embeds, masks = encode(texts)
        return embeds.astype("float32"), masks

    def replace(element):
        element = dict(element)
        texts = element.pop(TEXTS_KEY)
        embeds, masks = tf.py_function(encode_batch, [texts], (tf.float32, tf.bool))
        batch = tf.shape(texts)[0]
        element["text_embeds"] = tf.ensure_shape(
            tf.reshape(embeds, (batch, length, embed_dim)), (None, length, embed_dim)
        )
        # 0/1 floats, not bools: under tf.distribute Keras averages the first batch over
        # the replicas (to build the model), and bools cannot be summed. The cascade
        # reads any nonzero mask value as True.
        masks = tf.cast(tf.reshape(masks, (batch, length)), tf.float32)
        element["text_masks"] = tf.ensure_shape(masks, (None, length))
        return element

    return dataset.map(replace)


def has_texts(data):
    """True when `data` (a dict of arrays or a tf.data dataset of dicts) carries captions."""
    spec = getattr(data, "element_spec", None)
    if spec is not None:
        return isinstance(spec, dict) and TEXTS_KEY in spec
    return isinstance(data, dict) and TEXTS_KEY in data


def encode_texts_in_data(data, encode, *, embed_dim, length, batch_size=64):
    """`data` with its "texts" replaced by "text_embeds" and "text_masks".

    Args:
        data: a dict of arrays (encoded now, `batch_size` captions at a time) or a
            batched `tf.data.Dataset` of dicts (encoded batch by batch as it is read).
        encode: callable `list of str -> (embeds (B, length, embed_dim), masks (B, length))`
            returning numpy arrays of a fixed `length`.
        embed_dim: int, the encoder's width.
        length: int, the fixed number of tokens `encode` returns.
        batch_size: int, captions per encoder call for dict data. Defaults to 64.

    Returns:
        Data of the same kind without "texts".

    Raises:
        ValueError: if the dataset's elements are not batched dicts of captions.
    """
    if getattr(data, "element_spec", None) is not None:
        spec = data.element_spec[TEXTS_KEY]
        if len(spec.shape) != 1:
            raise ValueError(
                "A dataset's 'texts' must be batched 1-D string tensors (call `.batch(n)` "
                f"before `fit`). Received: element_spec['texts']={spec}"
            )
        return _encode_dataset(data, encode, embed_dim, length)
    return _encode_arrays(data, encode, batch_size)
