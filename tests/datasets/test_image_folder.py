"""`ImageFolder` / `image_folder_dataset`: transform, corrupt files, captions, errors."""

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from imagen_keras.data import ImageFolder, image_folder_dataset
from tests.datasets.conftest import BLUE, RED, _save, solid


def read_all(dataset):
    return [{k: v.numpy() for k, v in element.items()} for element in dataset]


def by_colour(elements):
    """Elements keyed by their image's colour name (mean over pixels)."""
    out = {}
    for element in elements:
        r, g, b = element["images"][..., :3].reshape(-1, 3).mean(0)
        if r > 0.9 and g < 0.1 and b < 0.1:
            out["red"] = element
        elif b > 0.9 and r < 0.1 and g < 0.1:
            out["blue"] = element
        elif g > 0.9 and r < 0.1 and b < 0.1:
            out["green"] = element
        elif abs(r - 0.5) < 0.02 and abs(r - g) < 1e-6 and abs(g - b) < 1e-6:
            out["grey"] = element
        else:
            raise AssertionError(f"unexpected colour {(r, g, b)}")
    return out


def test_corrupt_files_are_skipped_with_a_warning_and_counted(photo_folder):
    folder = ImageFolder(photo_folder, 8)
    assert len(folder) == 6  # notes.md is no image; the two bad files are found...
    with pytest.warns(RuntimeWarning, match="Skipped an unreadable image") as record:
        elements = read_all(folder.dataset(shuffle=False, seed=0))
    assert len(elements) == 4  # ...and skipped while reading
    assert folder.num_skipped == 2
    assert sorted(p.rsplit("/", 1)[-1] for p in folder.skipped_files) == [
        "corrupt.png",
        "truncated.jpg",
    ]
    assert len([w for w in record if "unreadable" in str(w.message)]) == 2
    # A second epoch skips them again, without new warnings or a higher count.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_all(folder.dataset(shuffle=False))) == 4
    assert folder.num_skipped == 2


@pytest.mark.filterwarnings("ignore:Skipped an unreadable image")
def test_grey_and_rgba_become_rgb_floats_in_unit_range(photo_folder):
    elements = read_all(image_folder_dataset(photo_folder, 8, shuffle=False))
    for element in elements:
        image = element["images"]
        assert image.shape == (8, 8, 3) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
    colours = by_colour(elements)
    assert sorted(colours) == ["blue", "green", "grey", "red"]
    np.testing.assert_allclose(colours["grey"]["images"], np.full((8, 8, 3), 128 / 255), atol=1e-6)
    np.testing.assert_allclose(
        colours["green"]["images"], np.broadcast_to([0.0, 1.0, 0.0], (8, 8, 3)), atol=1e-6
    )  # no alpha


@pytest.mark.filterwarnings("ignore:Skipped an unreadable image")
@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGBA", 4)])
def test_convert_image_to_sets_the_channels(photo_folder, mode, channels):
    elements = read_all(image_folder_dataset(photo_folder, 8, convert_image_to=mode, shuffle=False))
    assert {e["images"].shape for e in elements} == {(8, 8, channels)}
    if mode == "RGBA":  # the RGBA file keeps its alpha, the others are opaque
        alphas = sorted(round(float(e["images"][..., 3].mean()), 3) for e in elements)
        assert alphas == [round(100 / 255, 3), 1.0, 1.0, 1.0]
    else:  # PIL's luma of pure red: 0.299 * 255
        means = sorted(round(float(e["images"].mean()) * 255) for e in elements)
        assert 76 in means and 128 in means


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    """A 16x8 image (left and right quarters blue, middle red), a 24x24 1-px checkerboard
    and an 8x8 image white on its left half."""
    root = tmp_path_factory.mktemp("shapes")
    wide = solid(8, 16, BLUE)
    wide[:, 4:12] = RED
    _save(root / "wide.png", wide)
    checker = (np.indices((24, 24)).sum(0) % 2 * 255).astype(np.uint8)
    _save(root / "checker.png", checker)
    # Left half white, right half black: tells flipped from not.
    half = np.zeros((8, 8), np.uint8)
    half[:, :4] = 255
    _save(root / "sub" / "half.png", half)
    return root


def test_shorter_side_resize_and_centre_crop(shapes_folder):
    elements = read_all(image_folder_dataset(shapes_folder, 8, shuffle=False, random_flip=False))
    checker, half, wide = elements  # sorted paths: checker.png, sub/half.png, wide.png
    # 16x8 -> the shorter side is already 8: the centre crop keeps exactly the red middle.
    np.testing.assert_allclose(wide["images"], np.broadcast_to([1.0, 0.0, 0.0], (8, 8, 3)))
    # 24x24 1-pixel checkerboard shrunk 3x with an antialiased resize: flat grey (without
    # antialiasing, bilinear samples single pixels: all 0 or 1).
    np.testing.assert_allclose(checker["images"], np.full((8, 8, 3), 0.5), atol=0.01)
    np.testing.assert_array_equal(half["images"][:, :4], 1.0)


def test_random_flip_is_seeded_and_changes_across_epochs(shapes_folder):
    def flips(dataset, epochs=6):
        out = []
        for _ in range(epochs):
            for element in dataset:
                image = element["images"].numpy()
                if image[..., 0].mean() > 0.4 and image[..., 0].std() > 0.4:  # the half image
                    out.append(bool(image[0, 0, 0] < 0.5))
        return out

    first = flips(image_folder_dataset(shapes_folder, 8, seed=3))
    assert first == flips(image_folder_dataset(shapes_folder, 8, seed=3))
    assert len(first) == 6 and 0 < sum(first) < 6  # both orientations over 6 epochs
    assert not any(flips(image_folder_dataset(shapes_folder, 8, random_flip=False)))


def test_shuffle_order_is_seeded(shapes_folder):
    def order(seed):
        data = image_folder_dataset(shapes_folder, 8, seed=seed, random_flip=False)
        return [tuple(np.round(e["images"].numpy().mean((0, 1)), 3)) for e in data]

    assert order(1) == order(1)
    assert len({tuple(order(s)) for s in range(6)}) > 1


def caption_of(elements):
    return {colour: e["texts"].decode() for colour, e in by_colour(elements).items()}


@pytest.mark.filterwarnings("ignore:Skipped an unreadable image")
def test_sidecar_captions_match_their_images_and_missing_ones_are_skipped(photo_folder):
    with pytest.warns(UserWarning, match="1 of 6 images .* have no caption and are skipped"):
        folder = ImageFolder(photo_folder, 8, captions="sidecar")
    assert folder.num_missing_captions == 1 and len(folder) == 5
    data = folder.dataset(batch_size=2, shuffle=False)
    assert data.element_spec["texts"].shape.as_list() == [None]
    elements = [
        {"images": image, "texts": text}
        for batch in data
        for image, text in zip(batch["images"].numpy(), batch["texts"].numpy())
    ]
    assert caption_of(elements) == {
        "red": "a red thing",
        "blue": "a blue thing",
        "grey": "a grey thing",
    }


@pytest.mark.filterwarnings("ignore:Skipped an unreadable image")
def test_missing_captions_error_and_empty(photo_folder):
    with pytest.raises(ValueError, match=r"1 of 6 images .*missing_captions='error'.*rgba\.png"):
        ImageFolder(photo_folder, 8, captions="sidecar", missing_captions="error")
    folder = ImageFolder(photo_folder, 8, captions="sidecar", missing_captions="empty")
    assert folder.num_missing_captions == 1 and len(folder) == 6
    assert caption_of(read_all(folder.dataset()))["green"] == ""


def write_manifest(root, kind):
    rows = [
        ("red.png", "a red square"),
        ("nested/deeper/blue.JPG", "a blue square"),
        ("nested/deeper/blue.JPG", "something blue"),
        ("grey.png", "a grey square"),
        ("gone.png", "an image that was deleted"),
    ]
    path = root / f"manifest.{kind}"
    if kind == "csv":
        lines = ["name,text"] + [f'{f},"{c}"' for f, c in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text("\n".join(json.dumps({"name": f, "text": c}) for f, c in rows))
    return path


@pytest.mark.filterwarnings("ignore:Skipped an unreadable image")
@pytest.mark.filterwarnings("ignore:.*have no caption")
@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_captions(photo_folder, tmp_path, kind):
    manifest = write_manifest(tmp_path, kind)
    kwargs = dict(captions=manifest, file_column="name", caption_column="text")
    with pytest.warns(UserWarning, match="1 rows of the manifest"):
        folder = ImageFolder(photo_folder, 8, caption_choice="first", **kwargs)
    assert folder.num_unmatched_captions == 1
    assert folder.num_missing_captions == 3  # rgba, corrupt, truncated
    assert caption_of(read_all(folder.dataset())) == {
        "red": "a red square",
        "blue": "a blue square",
        "grey": "a grey square",
    }
    # "random" reads each of the blue image's two captions over a few epochs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = ImageFolder(photo_folder, 8, **kwargs)
    data = folder.dataset(seed=0)
    blues = {caption_of(read_all(data))["blue"] for _ in range(8)}
    assert blues == {"a blue square", "something blue"}


def test_manifest_errors(photo_folder, tmp_path):
    manifest = write_manifest(tmp_path, "csv")
    with pytest.raises(ValueError, match=r"no column 'file' \(`file_column`\).*\['name', 'text'\]"):
        ImageFolder(photo_folder, 8, captions=manifest)
    with pytest.raises(ValueError, match="manifest does not exist"):
        ImageFolder(photo_folder, 8, captions=tmp_path / "nothing.csv")
    bad = tmp_path / "captions.xml"
    bad.write_text("<x/>")
    with pytest.raises(ValueError, match=r"`captions` must be None, 'sidecar' or the path"):
        ImageFolder(photo_folder, 8, captions=bad)


def test_empty_folders_and_bad_arguments(tmp_path, photo_folder):
    with pytest.raises(ValueError, match=f"No images .* found under '{tmp_path}'"):
        image_folder_dataset(tmp_path, 8)
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="No images with extensions"):
        image_folder_dataset(tmp_path, 8)
    with pytest.raises(ValueError, match="`folder` is not a directory"):
        image_folder_dataset(tmp_path / "missing", 8)
    with pytest.raises(ValueError, match="convert_image_to='CMYK'"):
        ImageFolder(photo_folder, 8, convert_image_to="CMYK")
    with pytest.raises(ValueError, match="missing_captions='drop'"):
        ImageFolder(photo_folder, 8, captions="sidecar", missing_captions="drop")
    with pytest.raises(ValueError, match="image_size=0"):
        ImageFolder(photo_folder, 0)
    with pytest.raises(ValueError, match="caption_choice='last'"):
        ImageFolder(photo_folder, 8, caption_choice="last")
    with pytest.raises(ValueError, match="batch_size=0"):
        ImageFolder(photo_folder, 8).dataset(batch_size=0)


def test_image_without_pixels_in_a_valid_file_is_read_like_any_other(tmp_path):
    # A 1x1 image upscales to a flat square (the reference's Resize does the same).
    Image.new("RGB", (1, 1), RED).save(tmp_path / "dot.bmp")
    (element,) = read_all(image_folder_dataset(tmp_path, 4))
    np.testing.assert_allclose(element["images"], np.broadcast_to([1.0, 0, 0], (4, 4, 3)))
