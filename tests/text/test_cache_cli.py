"""`python -m imagen_keras.text.cache`, run in-process through `main`."""

import json

import numpy as np
import pytest

from imagen_keras.text import EmbeddingCache
from imagen_keras.text.cache import main, read_captions
from tests.text.conftest import CAPTIONS, MAX_LENGTH

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_builds_from_text_file_and_json_alike(tiny_preset, tiny_encoder, tmp_path, capsys):
    text_file = tmp_path / "captions.txt"
    text_file.write_text("\n".join(CAPTIONS[:4] + ["", CAPTIONS[0]]) + "\n")
    json_file = tmp_path / "captions.json"
    json_file.write_text(json.dumps(CAPTIONS[:4]))
    assert read_captions(str(text_file)) == CAPTIONS[:4] + [CAPTIONS[0]]
    common = ["--encoder", str(tiny_preset), "--max-length", str(MAX_LENGTH), "--quiet"]
    assert main(common + ["--captions", str(text_file), "--out", str(tmp_path / "a")]) == 0
    assert "4 captions" in capsys.readouterr().out
    assert main(common + ["--captions", str(json_file), "--out", str(tmp_path / "b")]) == 0
    a = EmbeddingCache(tmp_path / "a", encoder=tiny_encoder)
    b = EmbeddingCache(tmp_path / "b")
    np.testing.assert_array_equal(a.lookup(CAPTIONS[:4])[0], b.lookup(CAPTIONS[:4])[0])
    # Running it again finds the cache complete.
    assert main(common + ["--captions", str(json_file), "--out", str(tmp_path / "b")]) == 0


def test_errors_exit_with_status_1(tiny_preset, tmp_path, capsys):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({"not": "a list"}))
    args = ["--encoder", str(tiny_preset), "--captions", str(bad_json), "--out", str(tmp_path)]
    assert main(args) == 1
    assert "JSON list of strings" in capsys.readouterr().err
    good = tmp_path / "good.txt"
    good.write_text("a caption\n")
    args = ["--encoder", "no_such_t5", "--captions", str(good), "--out", str(tmp_path)]
    assert main(args) == 1
    assert "Unknown T5 encoder 'no_such_t5'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--encoder", str(tiny_preset)])
    assert info.value.code == 2
