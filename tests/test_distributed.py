"""torchrun with 2 CPU processes (gloo) takes the same steps as one process with twice the batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

TINY = {
    "model": {"architecture": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
              "attention_levels": [1], "num_heads": 2},
    "diffusion": {"target": "eps", "schedule": "linear"},
    "training": {"epochs": 1, "max_steps": 4, "lr": 2e-3, "warmup_steps": 2, "log_every": 1,
                 "device": "cpu", "threads": 1, "seed": 0},
    "sampling": {"steps": 2, "n_per_class": 1},
}


def have_mnist():
    sys.path.insert(0, str(ROOT / "src"))
    from difflab.data import dataset_path

    return dataset_path("mnist").exists()


def run(tmp_path, nproc, batch):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / f"out_{nproc}"
    args = [str(ROOT / "train.py"), "--config", str(cfg), f"training.batch_size={batch}", f"training.output_dir={out}"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return out / "tiny"


@pytest.mark.skipif(not have_mnist(), reason="needs data/mnist.npz: run python setup_mnist.py")
def test_two_ranks_match_one_process_with_double_batch(tmp_path):
    one = run(tmp_path, 1, 16)
    two = run(tmp_path, 2, 8)
    losses = [[json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two)]
    assert len(losses[0]) == len(losses[1]) == 4
    for a, b in zip(*losses):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5), losses
    # exactly one set of files: rank 1 wrote nothing
    def files(d):
        return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())

    assert files(one) == files(two)
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 4
