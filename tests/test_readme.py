"""The README's Python examples run as pasted, each in a fresh interpreter.

Every ```python block of README.md runs in its own subprocess (`sys.executable` on a
temporary file, in a temporary working folder, with this process's environment, so
`KERAS_BACKEND` and the offline settings of `conftest.py` apply). A block fails with its
README line, its first lines and the tail of its stderr.

An HTML comment on the line directly before a fence changes how its block runs:

- `<!-- readme-test: skip (reason) -->`: not run, reported as a pytest skip with the
  reason (network, the user's own files, several devices).
- `<!-- readme-test: continues -->`: run appended to the previous block's code in one
  process (the example builds on the one before it). The previous block still runs alone
  too, as its own case.

A marker anywhere else, or a misspelt one, is an error (`test_readme_markers_are_valid`),
so a typo cannot silently turn a skip into a failure or the other way round.

Backends. Blocks that build a cascade (`Imagen(`, `ElucidatedImagen(`) train and sample
it, and in a fresh process that is mostly compiling: on a 2-core CI machine they take
10-40 s each on torch (eager) but 1.5-5 min each on TensorFlow (tf.function graphs, 14 min
for the file), and JAX compiles with XLA too. So they run on torch only; the README's API
is the same on every backend, and the backend-specific behaviour of `fit` and `sample` is
tested in `test_imagen.py` and friends on all three. The other blocks (data pipelines, the
Unet) take 10-30 s each and run on every backend. `--run-slow` runs every block everywhere.
"""

import dataclasses
import pathlib
import re
import subprocess
import sys
import textwrap

import keras
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
TIMEOUT_S = 600
FIRST_LINES = 6
STDERR_TAIL = 3000

# Only these blocks are expensive enough to run on one backend (see the module docstring).
_CASCADE = re.compile(r"\b(?:Elucidated)?Imagen\(")
CASCADE_BACKEND = "torch"

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
_MARKER = re.compile(r"<!--\s*readme-test:(?P<body>.*?)-->")
_MARKER_BODY = re.compile(r"^\s*(?:(?P<continues>continues)|skip\s*\((?P<reason>.+)\))\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    """One ```python block: its 1-based README line (the fence's), code and marker."""

    line: int
    code: str
    skip: str | None = None  # the reason, when marked skip
    continues: bool = False


def extract_blocks(text):
    """Returns the ```python blocks of a markdown text, with their markers.

    Raises `ValueError` for a misspelt marker or one that is not directly before a
    ```python fence, and for a `continues` block with no block before it.
    """
    lines = text.splitlines()
    blocks = []
    markers = {}  # line index -> (skip reason, continues)
    index = 0
    while index < len(lines):
        line = lines[index]
        marker = _MARKER.search(line)
        if marker:
            body = _MARKER_BODY.match(marker.group("body"))
            if body is None:
                raise ValueError(
                    f"README line {index + 1}: unknown readme-test marker {line.strip()!r}; "
                    "use '<!-- readme-test: skip (reason) -->' or "
                    "'<!-- readme-test: continues -->'"
                )
            markers[index] = (body.group("reason"), bool(body.group("continues")))
            index += 1
            continue
        fence = _FENCE.match(line)
        if fence is None:
            index += 1
            continue
        # Find the closing fence (same or less indentation, no language).
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"README line {index + 1}: code fence is never closed")
        if fence.group("lang") == "python":
            code = textwrap.dedent("\n".join(lines[index + 1 : end])) + "\n"
            skip, continues = markers.pop(index - 1, (None, False))
            if continues and not blocks:
                raise ValueError(
                    f"README line {index + 1}: 'continues' but no python block comes before"
                )
            blocks.append(Block(index + 1, code, skip, continues))
        index = end + 1
    if markers:
        stray = min(markers) + 1
        raise ValueError(
            f"README line {stray}: readme-test marker is not on the line directly before "
            "a ```python fence"
        )
    return blocks


@dataclasses.dataclass(frozen=True)
class Case:
    """What one test runs: a block, with the code of the blocks it continues."""

    line: int
    code: str
    skip: str | None


def runnable_cases(blocks):
    """Joins each `continues` block to the code before it; skips propagate forward."""
    cases = []
    for block in blocks:
        if block.continues:
            previous = cases[-1]
            skip = block.skip or (
                f"continues the block of README line {previous.line}, which is skipped"
                if previous.skip
                else None
            )
            cases.append(Case(block.line, previous.code + block.code, skip))
        else:
            cases.append(Case(block.line, block.code, block.skip))
    return cases


def run_case(case, folder):
    """Runs a case's code in a fresh interpreter in `folder`; raises `AssertionError`."""
    script = pathlib.Path(folder) / f"readme_line{case.line}.py"
    script.write_text(case.code)
    try:
        result = subprocess.run(
            [sys.executable, str(script)],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        returncode, stderr = result.returncode, result.stderr
    except subprocess.TimeoutExpired as error:
        returncode = f"timeout after {TIMEOUT_S} s"
        stderr = error.stderr or ""
        if isinstance(stderr, bytes):
            stderr = stderr.decode(errors="replace")
    if returncode != 0:
        head = "\n".join(f"    {line}" for line in case.code.splitlines()[:FIRST_LINES])
        raise AssertionError(
            f"README block at line {case.line} failed ({returncode}):\n{head}\n    ...\n"
            f"--- stderr (tail) ---\n{stderr[-STDERR_TAIL:]}"
        )


_CASES = runnable_cases(extract_blocks(README.read_text()))


@pytest.mark.parametrize("case", _CASES, ids=[f"line{case.line}" for case in _CASES])
def test_readme_block_runs(case, tmp_path, request):
    if case.skip:
        pytest.skip(f"README line {case.line}: {case.skip}")
    backend = keras.backend.backend()
    if (
        _CASCADE.search(case.code)
        and backend != CASCADE_BACKEND
        and not request.config.getoption("--run-slow")
    ):
        pytest.skip(
            f"README line {case.line}: builds a cascade, which costs minutes of compiling on "
            f"{backend}: runs on {CASCADE_BACKEND} only (--run-slow runs it here too)"
        )
    run_case(case, tmp_path)


def test_readme_markers_are_valid():
    blocks = extract_blocks(README.read_text())
    assert blocks, "README.md has no ```python blocks"


_FAKE_README = """\
# Title

```python
print("first")
value = 41
```

<!-- readme-test: continues -->
```python
assert value == 41, value
```

<!-- readme-test: skip (needs the network) -->
```python
import urllib.request
```

```bash
echo "not python"
```

- a list item:

  ```python
  raise SystemExit("this block fails")
  ```
"""


def test_extractor_markers_and_failure(tmp_path):
    blocks = extract_blocks(_FAKE_README)
    assert [block.line for block in blocks] == [3, 9, 14, 24]
    assert [block.skip for block in blocks] == [None, None, "needs the network", None]
    assert [block.continues for block in blocks] == [False, True, False, False]
    assert blocks[3].code == 'raise SystemExit("this block fails")\n'  # dedented

    first, continued, skipped, failing = runnable_cases(blocks)
    assert continued.code == first.code + blocks[1].code
    assert skipped.skip == "needs the network"
    run_case(continued, tmp_path)  # `value` comes from the block before
    with pytest.raises(AssertionError, match=r"(?s)line 24 failed.*this block fails"):
        run_case(failing, tmp_path)
    with pytest.raises(AssertionError, match="NameError"):  # the same code without the first
        run_case(Case(9, blocks[1].code, None), tmp_path)


def test_extractor_rejects_bad_markers():
    with pytest.raises(ValueError, match="unknown readme-test marker"):
        extract_blocks("<!-- readme-test: skipp -->\n```python\npass\n```\n")
    with pytest.raises(ValueError, match="unknown readme-test marker"):
        extract_blocks("<!-- readme-test: skip -->\n```python\npass\n```\n")  # no reason
    with pytest.raises(ValueError, match="line 1: readme-test marker is not on the line"):
        extract_blocks("<!-- readme-test: skip (x) -->\n\n```python\npass\n```\n")
    with pytest.raises(ValueError, match="line 1: readme-test marker is not on the line"):
        extract_blocks("<!-- readme-test: skip (x) -->\n```bash\nls\n```\n")
    with pytest.raises(ValueError, match="no python block comes before"):
        extract_blocks("<!-- readme-test: continues -->\n```python\npass\n```\n")
    skipped_then_continued = extract_blocks(
        "<!-- readme-test: skip (x) -->\n```python\npass\n```\n"
        "<!-- readme-test: continues -->\n```python\npass\n```\n"
    )
    assert runnable_cases(skipped_then_continued)[1].skip == (
        "continues the block of README line 2, which is skipped"
    )
