"""The notebooks (notebooks/*.ipynb) run, top to bottom, with their exercises solved, and their checks pass.

Each notebook is executed as the plain Python of its code cells, in order, at the tiny size CI affords
(DIFFLAB_TINY=1), with each exercise cell (first line `# YOUR TURN: <key>`) replaced by its answer from
notebooks/solutions/<notebook>.py (sections `# %% <key>`). The checks that follow an exercise are plain asserts
in the notebook: with the answers in place they must pass, and an exercise left undone stops the notebook.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))
from solved import NOTEBOOKS, cells, exercise_key, solutions, solved_script, source  # noqa: E402


def test_there_is_a_notebook_for_every_step_of_the_history():
    names = " ".join(p.stem for p in NOTEBOOKS)
    for step in ["paths", "eps", "v", "flow", "transformer", "guidance", "samplers", "fewstep"]:
        assert step in names, f"no notebook for {step} in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_notebook_is_clean_and_each_exercise_has_an_answer_and_a_check(path):
    raw = json.loads(path.read_text())
    assert raw["nbformat"] == 4
    keys = []
    for i, cell in enumerate(raw["cells"]):
        if cell["cell_type"] == "code":
            clean = cell.get("outputs") == [] and cell.get("execution_count") is None
            assert clean, f"{path.name}: cell {i} has output"
        key = exercise_key(cell)
        if key:
            keys.append(key)
            assert "NotImplementedError" in source(cell), f"{path.name}: exercise {key} is already solved"
            following = [source(c) for c in raw["cells"][i + 1:] if c["cell_type"] == "code"][:1]
            assert following and "assert" in following[0], f"{path.name}: exercise {key} has no check cell after it"
    assert len(keys) >= 2, f"{path.name}: at least two exercises"
    assert sorted(keys) == sorted(solutions(path)), f"{path.name}: exercises and notebooks/solutions/ differ"
    first = source(raw["cells"][0]) + source(raw["cells"][1])
    assert "colab" in first.lower(), f"{path.name}: the first cells open it on Colab"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_notebook_runs_with_its_exercises_solved(path, tmp_path):
    script = tmp_path / f"{path.stem}.py"
    script.write_text(solved_script(path))
    env = {**os.environ, "DIFFLAB_TINY": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    run = subprocess.run([sys.executable, str(script)], cwd=ROOT / "notebooks", env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, f"{path.name} failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    print(f"{path.name}: {time.perf_counter() - start:.1f} s at the tiny size")


@pytest.mark.parametrize("path", NOTEBOOKS[:1], ids=[p.stem for p in NOTEBOOKS[:1]])
def test_an_exercise_left_undone_stops_the_notebook(path, tmp_path):
    code = [source(c) for c in cells(path) if c["cell_type"] == "code"]
    first = next(i for i, c in enumerate(cells(path)) if exercise_key(c))
    n = sum(1 for c in cells(path)[:first] if c["cell_type"] == "code")
    script = tmp_path / "undone.py"
    script.write_text("\n\n".join(code[: n + 2]))  # the cells before it, the exercise as given, and its check
    env = {**os.environ, "DIFFLAB_TINY": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT / "src")}
    run = subprocess.run([sys.executable, str(script)], cwd=ROOT / "notebooks", env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode != 0 and "NotImplementedError" in run.stderr
