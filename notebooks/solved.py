"""A notebook as the plain Python of its code cells, with each exercise replaced by its answer.

An exercise cell starts with `# YOUR TURN: <key>`; its answer is the section `# %% <key>` of
notebooks/solutions/<notebook>.py. tests/test_notebooks.py runs the result at a tiny size (DIFFLAB_TINY=1);
benchmarks/notebook_times.py runs it at the size a reader gets and prints how long each notebook takes.
"""

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOKS = sorted(HERE.glob("*.ipynb"))
EXERCISE = re.compile(r"#\s*YOUR TURN:\s*(\S+)")


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def exercise_key(cell: dict):
    if cell["cell_type"] != "code":
        return None
    match = EXERCISE.match(source(cell).lstrip())
    return match.group(1) if match else None


def solutions(path: Path) -> dict[str, str]:
    """notebooks/solutions/<stem>.py: `# %% <key>` sections, each the answer cell of one exercise."""
    text = (HERE / "solutions" / f"{path.stem}.py").read_text()
    parts = re.split(r"^# %% (\S+)\s*$", text, flags=re.M)
    return {key: body.strip() + "\n" for key, body in zip(parts[1::2], parts[2::2])}


def solved_script(path: Path) -> str:
    answers = solutions(path)
    code = []
    for cell in cells(path):
        if cell["cell_type"] != "code":
            continue
        key = exercise_key(cell)
        code.append(answers[key] if key else source(cell))
    return "\n\n".join(code)
