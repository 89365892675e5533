"""The `imagen-keras-cache` command: encode a caption set once into an `EmbeddingCache`.

Usage:
```
python -m imagen_keras.text.cache --encoder NAME_OR_DIR --captions captions.txt \
    --out DIR [--batch-size N] [--dtype float32|float16] [--max-length N] [--quiet]
```

`--encoder` is anything `T5Encoder.from_preset` takes ("t5-v1_1-base",
"google/t5-v1_1-xxl", "t5_1.1_base", or a local preset folder). `--captions` is a text
file with one caption per line (blank lines skipped) or a `.json` list of strings.
Duplicates are encoded once. Running the same command again after an interruption
resumes where it stopped. Bad input exits with status 1 and an error message (for a
missing preset, how to provide it), bad arguments with status 2.
"""

import argparse
import json
import sys

PROG = "imagen-keras-cache"


def read_captions(path):
    """Captions from a text file (one per line, blank lines skipped) or a JSON list."""
    if str(path).endswith(".json"):
        with open(path, encoding="utf-8") as f:
            captions = json.load(f)
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"{path!r} must hold a JSON list of strings.")
        return captions
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


def _parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description="Encode a caption set once into a T5 embedding cache."
    )
    parser.add_argument(
        "--encoder",
        required=True,
        metavar="NAME_OR_DIR",
        help="T5 name (t5-v1_1-base, google/t5-v1_1-xxl, t5_1.1_base) or local preset folder",
    )
    parser.add_argument(
        "--captions",
        required=True,
        metavar="FILE",
        help="text file with one caption per line, or a .json list of strings",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the cache folder")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="captions per batch (default 32)"
    )
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument(
        "--max-length", type=int, default=256, help="tokens per caption, at most (default 256)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        from imagen_keras.text.embedding_cache import EmbeddingCache
        from imagen_keras.text.loader import load_text_encoder

        captions = read_captions(args.captions)
        encoder = load_text_encoder(args.encoder, max_length=args.max_length)
        cache = EmbeddingCache.build(
            encoder,
            captions,
            args.out,
            batch_size=args.batch_size,
            dtype=args.dtype,
            progress=not args.quiet,
        )
    except (ValueError, OSError, KeyError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    print(
        f"{len(cache)} captions, {cache.manifest['num_tokens']} tokens, dim "
        f"{cache.embed_dim}, {cache.dtype} -> {cache.directory} "
        f"(encoder {cache.fingerprint})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
