"""Fixtures of the data pipeline tests: a small folder of images, good and bad, on disk."""

import io

import numpy as np
import pytest
from PIL import Image

# Each image's colour, so a test can tell which file an element came from.
RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def _save(path, array, mode=None, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8), mode).save(path, **kwargs)


def solid(height, width, colour):
    return np.broadcast_to(np.array(colour, np.uint8), (height, width, len(colour))).copy()


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    """Four readable images (RGB PNG, RGB JPEG in a subfolder, grey PNG, RGBA PNG), two
    unreadable ones (random bytes; a JPEG cut in half), a non-image file, and sidecar
    captions for all but the RGBA image."""
    root = tmp_path_factory.mktemp("photos")
    _save(root / "red.png", solid(8, 12, RED))
    _save(root / "nested" / "deeper" / "blue.JPG", solid(12, 8, BLUE), quality=100)
    _save(root / "grey.png", np.full((8, 8), 128, np.uint8))
    rgba = solid(8, 8, GREEN + (255,))
    rgba[..., 3] = 100
    _save(root / "rgba.png", rgba)
    (root / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(300))
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buffer, format="JPEG"
    )
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "notes.md").write_text("not an image")
    for name, caption in [
        ("red", "a red thing"),
        ("nested/deeper/blue", "a blue thing"),
        ("grey", "  a grey thing\n"),
        ("corrupt", "a broken file"),
        ("truncated", "half a photo"),
    ]:
        (root / f"{name}.txt").write_text(caption)
    return root
