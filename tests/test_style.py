"""The style the teaching core promises (issue 43, item 5): typed signatures students can copy, --sampler help
that lists what the registry holds, entry points that do not load the training stack to print their help, and
`t` kept for diffusion time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from difflab.commands import evaluate as evaluate_cmd
from difflab.commands import sample as sample_cmd
from difflab.commands.common import sampler_help
from difflab.samplers import SAMPLERS, describe

SRC = Path(__file__).resolve().parent.parent / "src" / "difflab"
TYPED = ["samplers.py", "objectives.py", "schedules.py", "guidance.py"]


def untyped(path: Path) -> list[str]:
    """The functions of a module with a parameter (self aside) or a return left unannotated (__init__ may omit it)."""
    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            params = a.posonlyargs + a.args + a.kwonlyargs + [p for p in (a.vararg, a.kwarg) if p]
            bare = [p.arg for p in params if p.annotation is None and p.arg not in ("self", "cls")]
            if bare or (node.returns is None and node.name != "__init__"):
                missing.append(f"{path.name}:{node.lineno} {node.name}")
    return missing


@pytest.mark.parametrize("name", TYPED)
def test_every_signature_of_the_teaching_core_is_typed(name):
    assert untyped(SRC / name) == []


def test_the_check_finds_an_untyped_signature(tmp_path):
    (tmp_path / "m.py").write_text("def f(x: int, y) -> int:\n    return x\n")
    assert untyped(tmp_path / "m.py") == ["m.py:1 f"]


def _help(module, capsys) -> str:
    with pytest.raises(SystemExit):
        module.main(["--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize("module", [sample_cmd, evaluate_cmd], ids=["sample", "evaluate"])
def test_sampler_help_lists_every_registered_sampler(module, capsys):
    text = _help(module, capsys)
    for name in SAMPLERS:
        assert f"{name}: {describe(name)}" in text


def test_a_sampler_added_to_the_registry_is_listed(monkeypatch):
    def sample_new(denoiser, x, times, path, *, generator=None, callback=None):
        """A new sampler (Someone et al. 2030, Eq. 1): more words after the citation."""

    monkeypatch.setitem(SAMPLERS, "new", sample_new)
    assert "new: A new sampler (Someone et al. 2030, Eq. 1)" in sampler_help()


def test_printing_the_help_does_not_load_the_training_stack():
    """sample.py --help once imported trainers, the pipeline and the plots through a re-export in training.py."""
    code = ("import sys; sys.path.insert(0, 'src'); from difflab.commands import sample, evaluate; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('difflab'))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=SRC.parents[1], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split()
    assert "difflab.commands.sample" in loaded
    assert not {"difflab.training", "difflab.trainers", "difflab.pipeline", "difflab.visualize"} & set(loaded)


def names_bound_to_training(tree: ast.AST) -> list[int]:
    """Lines where a variable named `t` is given a TrainingConfig: `t = cfg.training`, `d, t = ...`,
    `t: TrainingConfig`."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs = [(target, node.value)]
                if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    pairs = list(zip(target.elts, node.value.elts))
                for name, value in pairs:
                    if isinstance(name, ast.Name) and name.id == "t" and isinstance(value, ast.Attribute) \
                            and value.attr == "training":
                        lines.append(node.lineno)
        elif isinstance(node, ast.arg) and node.arg == "t" and node.annotation is not None \
                and "TrainingConfig" in ast.unparse(node.annotation):
            lines.append(node.lineno)
    return lines


def test_t_is_diffusion_time_never_a_training_config():
    found = [f"{path.relative_to(SRC)}:{line}" for path in sorted(SRC.rglob("*.py"))
             for line in names_bound_to_training(ast.parse(path.read_text()))]
    assert found == []


def test_the_check_finds_a_t_that_is_a_training_config():
    tree = ast.parse("t = cfg.training\nd, t = cfg.diffusion, cfg.training\ndef f(t: TrainingConfig): pass\n")
    assert names_bound_to_training(tree) == [1, 2, 3]
