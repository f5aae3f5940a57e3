"""Configs: every shipped file loads; mistakes stop with one line and exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from difflab.config import ConfigError, load_config, parse_override
from difflab.models import build_model, count_parameters

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.name == path.stem


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_milestones_have_the_same_parameter_budget(path):
    """The fair comparison: each main config's network is within 5% of 1.7M parameters on 1x28x28."""
    params = count_parameters(build_model(load_config(path).model, in_channels=1, image_size=28))
    assert abs(params / 1.7e6 - 1) <= 0.05, params


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("model:\n  chanels: 32\n", "model.chanels", "unknown key"),
        ("trainin:\n  lr: 0.1\n", "trainin", "unknown section"),
        ("training:\n  epochs: ten\n", "training.epochs", "expected int"),
        ("training:\n  lr: -0.001\n", "training.lr", "> 0"),
        ("model:\n  dropout: 1.5\n", "model.dropout", "[0, 1]"),
        ("training:\n  adam_beta2: 1.0\n", "training.adam_beta2", "[0, 1)"),
        ("model:\n  architecture: resnet\n", "model.architecture", "one of unet, dit, mmdit"),
        ("diffusion:\n  target: score\n", "diffusion.target", "one of eps, x0, v, flow"),
        ("training:\n  batch_size: many\n", "training.batch_size", "auto"),
        ("model:\n  use_ema: yes\n", "model.use_ema", "unknown key"),
        ("training:\n  lr: [1, 2]\n", "training.lr", "expected float"),
        ("model:\n  architecture: mmdit\n  single_depth: -1\n", "model.single_depth", ">= 0"),
        ("sampling:\n  midpoint: 1.5\n", "sampling.midpoint", "(0, 1) or null"),
    ],
)
def test_bad_configs_name_file_key_and_expectation(tmp_path, text, key, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert str(path) in message and key in message and expected in message
    assert "\n" not in message


def test_overrides_are_typed_and_checked(tmp_path):
    path = write(tmp_path, "training:\n  lr: 0.001\n")
    cfg = load_config(path, ["training.lr=3e-4", "model.channel_mult=[1,2]", "model.attention_levels=[1]",
                             "sampling.cfg_scale=5"])
    assert cfg.training.lr == pytest.approx(3e-4)
    assert cfg.model.net.channel_mult == [1, 2]
    assert isinstance(cfg.sampling.cfg_scale, float)
    assert parse_override("a.b=c") == ("a", "b", "c")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["lr=3"])
    with pytest.raises(ConfigError, match="training.epochs"):
        load_config(path, ["training.epochs=0"])


def run_train(*args):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_reports_one_line_and_exit_code_2():
    r = run_train("--config", "configs/unified_sd1_unet_eps.yaml", "--dry-run", "training.dropout=0.1")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "training.dropout" in lines[0] and "unified_sd1_unet_eps.yaml" in lines[0]
    assert "Traceback" not in r.stderr


def test_dry_run_prints_one_json_line():
    r = run_train("--config", "configs/unified_sd1_unet_eps.yaml", "--dry-run")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["config"] == "unified_sd1_unet_eps"
    assert (info["architecture"], info["target"]) == ("unet", "eps")
    assert abs(info["params"] - 1.7e6) <= 0.05 * 1.7e6
