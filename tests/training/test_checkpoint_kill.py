"""A training process SIGKILLed while it writes checkpoints always resumes from the newest
complete one: three processes in a row, each killed at another moment of a save."""

import pathlib
import signal
import subprocess
import sys
import time

import pytest

from imagen_keras.training import CheckpointManager, checkpoint_metadata
from tests.training.conftest import small_cascade
from tests.training.test_checkpoint import child_env

# Trains unet 1 one update at a time and saves after each, forever; logs what it did.
CHILD = r"""
import sys
from imagen_keras.training import CheckpointManager
from tests.conftest import colour_data
from tests.training.conftest import COMPILE, fast_ema_optimizer, small_cascade

directory, log = sys.argv[1:3]
manager = CheckpointManager(directory, max_to_keep=2)
imagen = small_cascade()
restored = manager.restore_latest(imagen)
with open(log, "a") as f:
    f.write(f"resumed {sum(imagen.stage_optimizers.steps())} {restored}\n")
optimizer = None if imagen.stage_optimizers.get(0) else fast_ema_optimizer()
imagen.compile(optimizer=optimizer, unet_number=1, **COMPILE)
images, embeds = colour_data(2)
while True:
    imagen.train_on_batch({"images": images, "text_embeds": embeds})
    path = manager.save(imagen)
    with open(log, "a") as f:
        f.write(f"saved {path}\n")
"""


def _log(path):
    return path.read_text().splitlines() if path.exists() else []


def _staging(tmp, folder, pid, newest):
    """The child's temporary folder holds a model.keras being written."""
    return any(tmp.glob("imagen_checkpoint_*/model.keras"))


def _writing(tmp, folder, pid, newest):
    """The child's temporary checkpoint file is being written in the folder."""
    return any(folder.glob(f".checkpoint.*.zip.{pid}.*.tmp.zip"))


def _newest(folder):
    steps = [int(p.name.split(".")[1]) for p in folder.glob("checkpoint.*.zip")]
    return max(steps, default=None)


# When to kill: while model.keras is written to the staging folder, while the checkpoint's
# temporary file is written, and right after a new checkpoint appeared (before or while
# the old ones are removed). Each waits for at least one save of that process first.
MOMENTS = {
    "staging": _staging,
    "writing": _writing,
    "renamed": lambda tmp, folder, pid, newest: _newest(folder) != newest,
}


@pytest.mark.slow
def test_sigkill_while_saving_always_resumes_from_the_newest_complete_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    manager = CheckpointManager(str(folder), max_to_keep=2)
    log = tmp_path / "child.log"
    cache = dict(
        # Later processes reuse the first one's compiled training step (JAX).
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    expected_resume = 0
    for moment, should_kill in MOMENTS.items():
        staging = tmp_path / f"tmp_{moment}"  # the child's own temporary folder
        staging.mkdir()
        env = child_env(TMPDIR=str(staging), **cache)
        start = len(_log(log))
        with open(tmp_path / f"{moment}.out", "w") as out:
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(folder), str(log)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            newest = None
            killed = False
            deadline = time.monotonic() + 600
            try:
                while child.poll() is None and time.monotonic() < deadline:
                    lines = _log(log)[start:]
                    saves = sum(line.startswith("saved") for line in lines)
                    if saves >= 1 and newest is None:
                        newest = _newest(folder)
                    if newest is not None and should_kill(staging, folder, child.pid, newest):
                        child.send_signal(signal.SIGKILL)
                        killed = True
                        break
                    time.sleep(0.001)
            finally:
                if child.poll() is None and time.monotonic() >= deadline:
                    child.kill()
                child.wait()
        output = (tmp_path / f"{moment}.out").read_text()
        assert killed and child.returncode == -signal.SIGKILL, f"{moment}:\n{output[-3000:]}"
        lines = _log(log)[start:]
        # The process resumed from the newest checkpoint the previous one completed.
        assert lines[0].split()[1] == str(expected_resume), (moment, lines[0])
        # Every checkpoint left is complete; the newest is the last (or one more, if
        # the kill came between the rename and the log line) save of the process.
        saved = [int(pathlib.Path(line.split()[1]).name.split(".")[1]) for line in lines[1:]]
        complete = manager.checkpoints()
        for step, path in complete:
            assert checkpoint_metadata(path)["num_steps_taken"][0] == step
        newest = complete[-1][0]
        assert newest in (saved[-1], saved[-1] + 1), (moment, saved, complete)
        assert len(complete) <= 3  # max_to_keep, plus one not yet removed by the kill
        assert manager.latest() == manager.path_for(newest)
        expected_resume = newest

    # The last kill's checkpoint restores here too, and killed saves' temporaries of
    # earlier processes were cleaned by the later ones.
    imagen = small_cascade()
    assert manager.restore_latest(imagen) == manager.path_for(expected_resume)
    assert imagen.stage_optimizers.steps() == [expected_resume, 0]
    left = [p.name for p in folder.glob(".checkpoint.*")]
    assert len(left) <= 1, left
