"""Ctrl-C (SIGINT): the step in flight finishes, last.pt is saved, the run says how to resume, and resuming works."""

import signal

import pytest
import torch

from difflab.infra.checkpoint import load_checkpoint

from ._support import needs_mnist, quick_trainer, record, start, tiny_yaml, train_main, wait_for


@needs_mnist
def test_ctrl_c_in_train_py_saves_and_the_printed_command_resumes(tmp_path, capsys):
    config = tiny_yaml(tmp_path, training={"epochs": 4})
    last = tmp_path / "experiments" / "tiny" / "checkpoints" / "last.pt"
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    proc = start("train.py", "--config", config, cwd=tmp_path, out=out, err=err)
    wait_for(last.exists, proc, what="the first epoch's checkpoint")  # well inside the training loop
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    stderr = err.read_text()
    assert "Traceback" not in stderr and "resume with:" in stderr, stderr[-2000:]
    step = int(load_checkpoint(last)["step"])
    assert 0 < step < 8

    # Run the command it printed (in this process: the same main() and run_main as a child's).
    command = stderr.split("resume with:", 1)[1].strip().splitlines()[0].split()
    assert command[:2] == ["python", "train.py"] and command[-1] == "--resume", command
    assert train_main(command[2:]) == 0
    assert f"at step {step} of 8" in capsys.readouterr().out
    assert int(load_checkpoint(last)["step"]) == 8
    record("Ctrl-C (SIGINT) to `train.py`, then the printed resume command", 1, 1,
           f"exit code 130, last.pt at step {step} of 8, resumed to the end")


class _CtrlC:
    """Wraps the training model: sends this process SIGINT during the forward pass of chosen steps."""

    def __init__(self, trainer, steps):
        self.trainer, self.model, self.steps = trainer, trainer.train_model, set(steps)

    def __call__(self, *args):
        if self.trainer.step in self.steps:
            signal.raise_signal(signal.SIGINT)
        return self.model(*args)


@pytest.mark.parametrize("step", [0, 3, 4])
def test_ctrl_c_at_any_step_finishes_that_step_and_saves_it(tmp_path, step):
    trainer = quick_trainer(tmp_path)
    trainer.train_model = _CtrlC(trainer, [step])
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup / `cmd &`
    trainer.fit()
    state = load_checkpoint(trainer.out_dir / "checkpoints" / "last.pt")
    ok = trainer.interrupted and trainer.step == step + 1 and state["step"] == step + 1
    record("Ctrl-C at a chosen step, in process", 1, int(ok), "the step in flight finishes and is saved")
    assert ok, (trainer.interrupted, trainer.step, state["step"])
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_second_ctrl_c_during_a_checkpoint_write_stops_at_once_and_keeps_the_old_file(tmp_path, monkeypatch):
    trainer = quick_trainer(tmp_path)
    trainer.fit(stop_after=2)
    last = trainer.out_dir / "checkpoints" / "last.pt"
    before = last.read_bytes()
    real_save = torch.save

    def save_then_ctrl_c_twice(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        signal.raise_signal(signal.SIGINT)  # the first asks to stop after this step
        signal.raise_signal(signal.SIGINT)  # the second stops at once: KeyboardInterrupt mid-write

    monkeypatch.setattr(torch, "save", save_then_ctrl_c_twice)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.undo()
    intact = last.read_bytes() == before and load_checkpoint(last)["step"] == 2
    leftovers = list(last.parent.glob(".*.tmp")) + list(last.parent.glob("model_epoch_2.pt"))
    record("a second Ctrl-C in the middle of a checkpoint write", 1, int(intact and not leftovers),
           "KeyboardInterrupt at once; the previous last.pt untouched, no partial file")
    assert intact and not leftovers, leftovers
