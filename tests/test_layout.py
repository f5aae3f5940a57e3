"""The house's fence: the lesson at the top of src/difflab/, the machinery in infra/, study/, demo/ and commands/.

A student reads the README's layout to know where to start and what to skip, so it must name every module
once, where it is; the lesson must not reach into the study, the demo or the commands; and the score
cache, which tells scoring modules from the rest by file name, must still know every module after a move."""

import ast
import re
from pathlib import Path

from difflab.study import score_cache

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "difflab"
MACHINERY = ("infra", "study", "demo", "commands")
ABOVE_THE_LESSON = ("study", "demo", "commands")  # what the lesson and infra/ never import


def modules() -> list:
    """Every module of the package as a path under src/difflab/ (packages' __init__.py left out)."""
    return sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if p.name != "__init__.py")


def layout_entries() -> list:
    """The modules README's Layout names under src/difflab/, as paths: a `name/` line opens a folder for the
    lines indented below it."""
    section = ROOT.joinpath("README.md").read_text().split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    found = []
    for block in re.findall(r"```\n(.*?)```", section, re.S):
        lines = block.splitlines()
        if not lines or lines[0].strip() != "src/difflab/":
            continue
        folders = []  # (indent, name) of the folders open above the current line
        for line in lines[1:]:
            indent = len(line) - len(line.lstrip())
            name = line.split()[0]
            folders = [(i, f) for i, f in folders if i < indent]
            if name.endswith("/"):
                folders.append((indent, name))
            elif name.endswith(".py"):
                found.append("".join(f for _, f in folders) + name)
    return found


def imported_modules(path: Path) -> set:
    """The difflab modules a file imports, as dotted names, relative imports resolved."""
    package = ["difflab", *path.relative_to(SRC).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found |= {name} | {f"{name}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("difflab.")}


def test_the_readme_layout_lists_every_module_once_where_it_is():
    listed = layout_entries()
    assert sorted(listed) == modules(), (set(modules()) - set(listed), set(listed) - set(modules()))
    assert len(listed) == len(set(listed))


def test_the_lesson_and_infra_never_import_the_study_the_demo_or_the_commands():
    outside = [p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] not in ABOVE_THE_LESSON
               and p.name != "__main__.py"]  # __main__.py is the commands' entry point
    assert any(p.name == "samplers.py" for p in outside) and any(p.parent.name == "infra" for p in outside)
    crossings = [f"{p.relative_to(SRC)} -> {name}" for p in outside for name in imported_modules(p)
                 if name.split(".")[1] in ABOVE_THE_LESSON]
    assert not crossings, crossings


def test_infra_stands_below_the_lesson():
    """infra/ imports only infra/: the lesson imports it (checkpoints, failures, the range rules), so an import
    back into the lesson would tie the two into a loop of folders."""
    crossings = [f"{p.relative_to(SRC)} -> {name}" for p in (SRC / "infra").glob("*.py")
                 for name in imported_modules(p) if not name.startswith("difflab.infra")]
    assert not crossings, crossings


def test_the_machinery_is_out_of_the_lesson_folder():
    """The lesson's folder holds no module that README files under the machinery: each lives in its subfolder."""
    top = {p.name for p in SRC.glob("*.py")}
    for folder in MACHINERY:
        assert (SRC / folder / "__init__.py").exists()
        assert not top & {p.name for p in (SRC / folder).glob("*.py") if p.name != "__init__.py"}, folder


def test_the_score_cache_knows_every_module_after_the_moves():
    """NOT_SCORING names files, wherever they are: each must exist (a renamed module would otherwise start to
    count, or a stale name hide a new one), and the digest must read the scoring modules in every subfolder."""
    names = {p.name for p in SRC.rglob("*.py")}
    assert score_cache.NOT_SCORING <= names, score_cache.NOT_SCORING - names
    read = {str(p.relative_to(SRC)) for p in score_cache.scoring_files(SRC)}
    for scoring in ("samplers.py", "guidance.py", "pipeline.py", "evaluation.py", "metrics.py", "models/unet.py",
                    "infra/checkpoint.py", "infra/weights.py"):
        assert scoring in read, scoring
    for not_scoring in ("study/compare.py", "study/report.py", "demo/session.py", "demo/page.py",
                        "commands/common.py", "commands/demo.py", "infra/runs.py", "loop.py"):
        assert not_scoring not in read, not_scoring
