"""Recipe run -> checkpoint -> `imagen` CLI; a killed run resumes with the same command."""

import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import yaml
from PIL import Image

from imagen_keras.recipes import cli, load_recipe
from imagen_keras.recipes.train import run
from imagen_keras.training import checkpoint_metadata, load_imagen_from_checkpoint

TINY = {
    "model": {
        "image_sizes": [8],
        "timesteps": 20,
        "unets": [
            {
                "dim": 8,
                "dim_mults": [1, 2],
                "layer_attns": [False, True],
                "layer_cross_attns": [False, True],
                "attn_heads": 2,
                "attn_dim_head": 8,
                "max_text_len": 6,
            }
        ],
    },
    "text_encoder": {"tiny": {"hidden_dim": 16, "intermediate_dim": 16, "num_layers": 1}},
    "data": {"source": "demo", "colours": ["red", "blue"]},
    "train": {
        "steps": 4,
        "batch_size": 4,
        "checkpoint_every": 2,
        "sample_every": 4,
        "jit_compile": False,
        "lr": 0.001,
    },
    "sample": {
        "prompts": ["a red digit one", "a blue digit two"],
        "sampler": "ddim",
        "ddim_steps": 3,
    },
}


def write_recipe(folder, **train):
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["train"].update(train)
    path = os.path.join(folder, "tiny.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def test_recipe_run_then_imagen_writes_the_prompt_png(tmp_path, capsys):
    recipe = load_recipe(write_recipe(tmp_path, tensorboard=True))
    folder = str(tmp_path / "run")
    result = run(recipe, output_dir=folder)
    assert result["steps"] == 4 and not result["interrupted"] and result["resumed_from"] == 0
    assert os.path.basename(result["checkpoint"]) == "checkpoint.4.zip"
    meta = checkpoint_metadata(result["checkpoint"])
    assert meta["num_steps_taken"] == [4]
    assert meta["extra"]["recipe"]["model"] == TINY["model"]  # self-describing
    for name in ("config.yaml", "log.csv", "samples.png", "text_encoder"):
        assert os.path.exists(os.path.join(folder, name)), name
    assert os.listdir(os.path.join(folder, "tensorboard", "train"))  # train.tensorboard
    assert Image.open(os.path.join(folder, "samples.png")).size[0] >= 2 * 64
    assert "Done: unet 1 has 4/4 steps" in capsys.readouterr().out

    out = tmp_path / "images"
    args = ["--model", folder, "a red digit one", "--output", str(out), "--sampler", "ddim"]
    assert cli.main(args + ["--steps", "3", "--num-images", "2"]) == 0
    assert sorted(os.listdir(out)) == ["a_red_digit_one_0.png", "a_red_digit_one_1.png"]
    second = np.asarray(Image.open(out / "a_red_digit_one_1.png"))
    assert second.shape == (8, 8, 3)
    # Image i uses seed + i whatever --num-images is: --seed 1 alone gives image 1 (the
    # same noise bits; kernels that block by batch size may round a pixel differently).
    assert cli.main(args + ["--steps", "3", "--seed", "1"]) == 0
    alone = np.asarray(Image.open(out / "a_red_digit_one.png")).astype(int)
    first = np.asarray(Image.open(out / "a_red_digit_one_0.png")).astype(int)
    same = np.abs(alone - second.astype(int))
    assert np.median(same) <= 1 and same.mean() < 2, same
    assert np.abs(first - second.astype(int)).mean() > 10 * max(same.mean(), 0.5)

    # The same training command again: nothing left to train, same checkpoint.
    again = run(recipe, output_dir=folder)
    assert again["resumed_from"] == 4 and again["checkpoint"] == result["checkpoint"]


def test_imagen_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["--model", str(tmp_path / "missing"), "a cat"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model") and err.count("\n") == 1
    assert cli.main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "No recipe file" in capsys.readouterr().err
    assert cli.main(["config", "demo", "--path", str(tmp_path / "mine.yaml")]) == 0
    assert load_recipe(tmp_path / "mine.yaml").train["steps"] > 0


def _wait_for(path, process, timeout):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process.poll() is not None:
            out = process.stdout.read()
            raise AssertionError(f"training exited ({process.returncode}) early:\n{out[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no {path} after {timeout} s")
        time.sleep(0.2)


@pytest.fixture
def processes():
    """Popen objects killed at the end of the test, whatever happened."""
    started = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)


def test_interrupted_and_killed_runs_continue_with_the_same_command(tmp_path, processes):
    # In mixed precision (train.precision), which must survive the resumes too.
    recipe = write_recipe(tmp_path, steps=100000, sample_every=None, precision="bf16")
    folder = tmp_path / "run"
    command = [sys.executable, "-m", "imagen_keras.recipes.train", "--config", recipe]
    command += ["--output", str(folder)]
    # The command turns on JAX's compilation cache: the resumed runs load from it.
    cache = tmp_path / "jax_cache"
    env = dict(os.environ, PYTHONUNBUFFERED="1", IMAGEN_KERAS_COMPILATION_CACHE=str(cache))
    checkpoints = folder / "checkpoints"
    # A background job of a non-interactive shell (how CI starts the suite) inherits
    # SIGINT ignored, and Python then installs no Ctrl-C handler: give the child the
    # default disposition, as a process started from a terminal has.
    start = dict(
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )

    # Ctrl-C: a checkpoint of the step reached, exit code 130.
    process = subprocess.Popen(command, **start)
    processes.append(process)
    _wait_for(checkpoints / "checkpoint.2.zip", process, timeout=600)
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 130, out[-3000:]
    assert "Interrupted at step" in out
    cached = os.listdir(cache) if cache.exists() else []
    assert (len(cached) > 10) == (keras.backend.backend() == "jax"), cached
    interrupted_at = max(int(name.split(".")[1]) for name in os.listdir(checkpoints))
    assert interrupted_at >= 2

    # The same command resumes from there; a SIGKILL (a crash) loses only unsaved steps.
    process = subprocess.Popen(command, **start)
    processes.append(process)
    target = interrupted_at + (2 if interrupted_at % 2 == 0 else 1)
    _wait_for(checkpoints / f"checkpoint.{target}.zip", process, timeout=600)
    process.kill()
    out, _ = process.communicate(timeout=60)
    assert f"Resumed from {checkpoints / f'checkpoint.{interrupted_at}.zip'}" in out, out[-3000:]
    last = max(int(name.split(".")[1]) for name in os.listdir(checkpoints) if name[0] != ".")

    # Once more, to a fixed end: it starts from the newest checkpoint and stops there.
    result = run(load_recipe(recipe, [f"train.steps={last + 2}"]), output_dir=str(folder))
    assert result["resumed_from"] == last
    assert checkpoint_metadata(result["checkpoint"])["num_steps_taken"] == [last + 2]
    imagen = load_imagen_from_checkpoint(result["checkpoint"])
    assert imagen.unets[0].dtype_policy.name == "mixed_bfloat16"
    assert all(w.dtype == "float32" for w in imagen.unets[0].trainable_weights)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_recipe_trains_on_an_image_folder_with_sidecar_captions(tmp_path):
    """`data.source: folder`: the recipe reads the folder's images and captions, builds
    its tiny T5 from those captions and samples its grid from them."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    captions = {"zebra": "a striped zebra", "flamingo": "a pink flamingo"}
    for index in range(6):
        word = "zebra" if index % 2 else "flamingo"
        pixels = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"{word}_{index}.png")
        (photos / f"{word}_{index}.txt").write_text(captions[word])
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["data"] = {"source": "folder", "folder": str(photos), "captions": "sidecar"}
    config["train"].update(steps=2, checkpoint_every=2, sample_every=None)
    config["sample"]["prompts"] = None  # the grid's prompts come from the data
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(config))
    folder = str(tmp_path / "run")
    result = run(load_recipe(str(path)), output_dir=folder, verbose=False)
    assert result["steps"] == 2 and os.path.basename(result["checkpoint"]) == "checkpoint.2.zip"
    recipe = checkpoint_metadata(result["checkpoint"])["extra"]["recipe"]
    assert recipe["data"]["source"] == "folder"
    # The tiny T5's vocabulary was learnt from the folder's captions: their words are
    # known pieces, a word it never saw is not.
    from imagen_keras.recipes.runs import load_trained_cascade

    cascade, _ = load_trained_cascade(folder)
    tokenizer = cascade.text_encoder.tokenizer
    unk = tokenizer.token_to_id("<unk>")
    for caption in captions.values():
        assert unk not in keras.ops.convert_to_numpy(tokenizer(caption)).tolist(), caption
    assert unk in keras.ops.convert_to_numpy(tokenizer("quixotic")).tolist()
    grid = Image.open(os.path.join(folder, "samples.png"))
    assert grid.size[0] >= 2 * 64  # one column per distinct caption of the folder
