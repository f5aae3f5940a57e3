"""The one training loop: every trainer (diffusion, the VAE, distillation) runs through it.

A trainer hands the loop its loss, a function of one batch and that batch's random draws,

    loss(x, y, draws) -> (the scalar to minimise, {name: detached tensor} summed between log lines)

(prepare() takes it), and supplies little else: `draw(tag)`, a picture of the model now (sample grid,
reconstructions), and `extra_state()`, what its checkpoints hold beyond the common fields. The loop
owns everything a run needs around the loss, the same for all: the data order (epoch e's
permutation comes from seed + e, so a resumed run sees the same batches), the random draws of each
step and their share on each DDP rank (`Draws`), the learning-rate schedule, gradient clipping, EMA,
non-finite losses (stop, or skip a few), logging to metrics.jsonl with a progress bar, atomic
checkpoints every epoch, resume, Ctrl-C (saves last.pt and stops), and DDP across ranks.

trainers.py names every trainer (TRAINERS); train.py builds the one a config names.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm import tqdm

from .infra import runs
from .infra.board import Board
from .infra.checkpoint import (RESUME_FIELDS, CheckpointError, check_resume_fields, epoch_checkpoints, load_checkpoint,
                         load_weights, save_checkpoint, set_rng_state)
from .config import ConfigError, config_from_dict
from .settings import Config
from .infra.distributed import DistInfo, barrier, init_distributed, mean_across_ranks, select_device
from .models import count_parameters
from .optim import EMA, adamw, lr_at, run_length
from .infra.outputs import write_error, writing

# Every diffusion target (eps, x0, v, flow) has about unit variance, so predicting zero scores a loss
# near 1; a loss a hundred times that means the weights have blown up (lr far too high), finite or not.
DIVERGED_LOSS = 100.0
# on_nonfinite=skip skips a bad step; a run that skips more than this share of its steps is broken.
MAX_SKIPPED_SHARE, MIN_SKIPPED = 0.05, 2

Tensor = torch.Tensor


class NonFiniteLoss(RuntimeError):
    """The loss or the weights stopped being finite; nothing non-finite is saved."""


@dataclass(frozen=True)
class Draws:
    """The random numbers of one step, drawn for the whole global batch; each call returns this rank's share.

    Every rank draws the randomness of the whole global batch and keeps its slice, so a run is the
    same for any number of ranks (and the generators stay in step for resume). A loss asks for its
    draws here and so reads as its paper's algorithm, with DDP nowhere in it.
    """

    generator: torch.Generator
    n: int  # the global batch: every rank's images together
    mine: slice  # this rank's part of it
    device: torch.device

    def sliced(self, draw: Callable[[int, torch.Generator, torch.device], Tensor]) -> Tensor:
        """draw(n, generator, device) for the whole global batch; this rank's rows of it."""
        return draw(self.n, self.generator, self.device)[self.mine]

    def randn(self, *shape: int) -> Tensor:
        """N(0, I) noise of `shape` per sample: (B, *shape)."""
        return self.sliced(lambda n, g, dev: torch.randn((n, *shape), generator=g, device=dev))

    def rand(self) -> Tensor:
        """One U[0, 1) number per sample: (B,)."""
        return self.sliced(lambda n, g, dev: torch.rand(n, generator=g, device=dev))

    def randint(self, high: int) -> Tensor:
        """One integer uniform in {0, ..., high - 1} per sample: (B,)."""
        return self.sliced(lambda n, g, dev: torch.randint(0, high, (n,), generator=g, device=dev))

    def index(self) -> Tensor:
        """Each sample's position in the global batch: (B,)."""
        return self.sliced(lambda n, g, dev: torch.arange(n, device=dev))


# A trainer's loss: one batch (x, y) and its draws -> (the loss to minimise, {name: detached tensor} to log).
Loss = Callable[[Tensor, Tensor, Draws], tuple[Tensor, dict]]


class TrainingLoop:
    """Steps, logging, checkpoints and resume around a loss that a trainer hands to prepare()."""

    ema: Optional[EMA] = None  # a trainer that keeps an EMA of its weights sets it in prepare()
    resume_sections = ("model",)  # config sections a checkpoint must share to be resumed
    resume_fields: dict = {}  # fields its checkpoints must hold beyond checkpoint.RESUME_FIELDS
    pictures = "samples"  # the folder under the run's that draw() writes its pictures into

    def __init__(self, cfg: Config, device: Optional[torch.device] = None, quiet: bool = False,
                 dist: Optional[DistInfo] = None):
        self.cfg, tc = cfg, cfg.training
        self.dist = dist or init_distributed()
        self.quiet = quiet or not self.dist.is_main
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.device = device or select_device(tc.device, self.dist.local_rank)
        self.out_dir = Path(tc.output_dir) / cfg.name
        self.step, self.images_seen, self.elapsed, self.skipped = 0, 0, 0.0, 0
        # CPU seconds of this process (all its threads) spent training: unlike wall seconds, a paused run or an
        # evaluation in between does not count (the learning curves of benchmarks/curves.py plot it)
        self.cpu_elapsed = 0.0
        self.interrupted, self.train_images_per_s = False, None
        self.noise_gen = torch.Generator(device=self.device).manual_seed(tc.seed + 1)
        self._perm = None  # (epoch, that epoch's permutation of the dataset)
        self.board = Board(None)  # TensorBoard, while fit() runs with training.tensorboard: true

    def prepare(self, model: torch.nn.Module, data: tuple, batch_size: int, loss: Loss, ema: bool = False) -> None:
        """Once the trainer has built its model: its loss, the data, the optimiser and the run's length."""
        tc = self.cfg.training
        self.x, self.y = data[0].to(self.device), data[1].to(self.device)  # the dataset, drawn by index
        self.model, self.params, self.loss = model, count_parameters(model), loss
        self.ema = EMA(model, tc.ema_decay) if ema else None
        self.opt = adamw(model, tc)
        # batch_size is per rank; one step consumes world * batch_size images.
        self.batch_size, self.global_batch = batch_size, batch_size * self.dist.world
        self.steps_per_epoch = max(len(self.x) // self.global_batch, 1)
        self.total_steps = run_length(tc, self.steps_per_epoch, self.global_batch)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the training step calls: DDP across ranks, then torch.compile if asked for."""
        if self.device.type == "cuda":  # TF32 matmuls on Ampere and newer: ~fp32 accuracy, far faster
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        compile_ = self.cfg.training.compile
        if compile_ is None:
            compile_ = self.device.type == "cuda"  # measured: on the CPU compile does not pay off here
        return torch.compile(model) if compile_ else model

    # ------------------------------------------------------------------ what a trainer may change

    def summarise(self, sums: dict, n: int) -> dict:
        """The log record's own fields from the logged tensors summed over `n` good steps."""
        return {k: (v.item() / n if n else None) for k, v in sums.items()}

    def postfix(self, record: dict) -> dict:
        """What the progress bar shows after each log line."""
        loss = record.get("loss")
        return {"loss": "skipped" if loss is None else f"{loss:.4f}"}

    def what(self) -> str:
        """What is trained, for the line a run starts with."""
        return type(self).__name__

    def draw(self, tag: str) -> Optional[Path]:
        """A picture of the model now, once an epoch (or every training.sample_every steps); its PNG."""

    def finish(self) -> None:
        """Called once when the run reaches its last step (a final evaluation, say)."""

    def extra_state(self) -> dict:
        """What this trainer's checkpoints hold beyond the common fields."""
        return {}

    def load_extra_state(self, state: dict, path: Path) -> None:
        """Read back what extra_state() wrote."""

    # ------------------------------------------------------------------ one step

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """The batch of a global step: epoch e's permutation comes from seed + e, so a resumed run sees the
        same data."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.cfg.training.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.x), generator=g).to(self.device))
        # This rank's slice of the global batch: ranks see disjoint images.
        start = pos * self.global_batch + self.dist.rank * self.batch_size
        idx = self._perm[1][start : start + self.batch_size]
        x = self.x[idx]
        if x.dtype == torch.uint8:  # a dataset kept as bytes (Moving MNIST's clips): [0, 255] -> [-1, 1]
            x = x.float() / 127.5 - 1
        return x, self.y[idx]

    def draws(self) -> Draws:
        """The next step's random numbers from the run's noise generator: this rank's share of the global batch's."""
        mine = slice(self.dist.rank * self.batch_size, (self.dist.rank + 1) * self.batch_size)
        return Draws(self.noise_gen, self.global_batch, mine, self.device)

    def train_step(self, step: int) -> Optional[dict]:
        """One AdamW step; the tensors to log, or None for a non-finite step that was skipped."""
        tc = self.cfg.training
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, tc.lr, tc.warmup_steps, self.total_steps) * group.get("lr_scale", 1.0)
        self.model.train()
        loss, logged = self.loss(*self.batch(step), self.draws())
        if tc.on_nonfinite == "skip" or self.device.type != "cuda":
            # On the CPU this check is free; on a GPU it costs a synchronisation, so there it
            # happens only in "skip" mode (and in "stop" mode at each log step, in fit()).
            bad = 1.0 - mean_across_ranks(torch.isfinite(loss).float().reshape(1), self.dist).item()
            if bad > 0:  # any rank's loss was not finite: every rank agrees to skip or stop
                if tc.on_nonfinite == "stop":
                    raise NonFiniteLoss(f"the loss became {loss.item()} at step {step}; stopping "
                                        f"(training.on_nonfinite=skip skips such steps instead)")
                self.opt.zero_grad(set_to_none=True)
                self.count_skipped(step)
                return None
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # under DDP this also averages the gradients across ranks
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.opt.step()
        self.after_step(step)
        return logged

    def after_step(self, step: int) -> None:
        """After each optimiser step: the EMA of the weights, if this trainer keeps one."""
        if self.ema is not None:
            self.ema.update(self.model, step)

    def count_skipped(self, step: int) -> None:
        """training.on_nonfinite=skip: a few bad steps are skipped; more than a small share stops the run."""
        self.skipped += 1
        if self.skipped > max(MIN_SKIPPED, MAX_SKIPPED_SHARE * (step + 1)):
            raise NonFiniteLoss(f"{self.skipped} of the first {step + 1} steps had a non-finite loss and were skipped "
                                f"(more than {MAX_SKIPPED_SHARE:.0%}); stopping (lower training.lr, or check the data)")

    # ------------------------------------------------------------------ the loop

    def progress(self) -> tqdm:
        """The progress bar of fit(); as a context manager it ends its line even when the run fails."""
        return tqdm(total=self.total_steps, initial=self.step, disable=self.quiet, unit="step", dynamic_ncols=True)

    def fit(self, stop_after: Optional[int] = None, overwrite: bool = False) -> dict:
        """Train until total_steps (or `stop_after` steps); return the last log record.

        A fresh run refuses a folder that holds another run's results unless `overwrite`, and
        a second live run in the same folder is refused (runs.claim). Ctrl-C (SIGINT) finishes
        the current step, saves last.pt and returns with `self.interrupted` set, so nothing is
        lost and --resume continues.
        """
        tc, self.interrupted = self.cfg.training, False
        end = self.total_steps if stop_after is None else min(self.total_steps, stop_after)
        folder = (runs.claim(self.out_dir, fresh=self.step == 0, overwrite=overwrite) if self.dist.is_main
                  else nullcontext())
        sums: dict = {}  # the logged tensors, summed on the device between log lines
        n_since, n_good, t_last, cpu_last, last_log = 0, 0, time.perf_counter(), time.process_time(), {}
        kept = f"checkpoints already in {self.out_dir / 'checkpoints'} are intact"
        self.board = Board(self.out_dir / "tensorboard" if tc.tensorboard and self.dist.is_main else None)
        # the bar starts once the folder is ours
        with folder, runs.sigint_sets_flag(self), writing(self.out_dir, kept), self.progress() as bar, self.board:
            if self.dist.is_main:
                (self.out_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
            while self.step < end and not self.interrupted:
                logged = self.train_step(self.step)  # None: a non-finite step that was skipped
                self.step += 1
                self.images_seen += self.global_batch
                if logged is not None:
                    for k, v in logged.items():
                        sums[k] = sums[k] + v if k in sums else v.clone()
                    n_good += 1
                n_since += 1
                bar.update(1)
                epoch_done = self.step % self.steps_per_epoch == 0
                if self.step % tc.log_every == 0 or self.step == end or epoch_done:
                    # The only host-device synchronisation: once every log_every steps.
                    now = time.perf_counter()
                    self.elapsed += now - t_last
                    self.cpu_elapsed += time.process_time() - cpu_last
                    self.train_images_per_s = n_since * self.global_batch / max(now - t_last, 1e-9)
                    last_log = self.log(self.mean_over_ranks(sums), n_good)
                    self.check_loss(last_log.get("loss"))
                    bar.set_postfix(**self.postfix(last_log), img_s=f"{self.train_images_per_s:.0f}",
                                    epoch=self.step // self.steps_per_epoch)
                    sums = {}
                    n_since, n_good, t_last, cpu_last = 0, 0, time.perf_counter(), time.process_time()
                if tc.sample_every and self.step % tc.sample_every == 0 and self.dist.is_main:
                    self.board.image(self.draw(f"step_{self.step:07d}"), self.step)
                if epoch_done or self.step == self.total_steps:
                    self.end_of_epoch()
                    t_last, cpu_last = time.perf_counter(), time.process_time()  # drawing and saving are not training
            if self.step < self.total_steps:  # stopped early: keep everything needed to resume
                self.save("last.pt")
            else:
                self.finish()
        barrier(self.dist)
        return last_log

    def mean_over_ranks(self, sums: dict) -> dict:
        """Each logged sum averaged across ranks, in one reduction (a single rank: unchanged)."""
        if not self.dist.enabled or not sums:
            return sums
        flat = mean_across_ranks(torch.cat([v.reshape(-1).float() for v in sums.values()]), self.dist)
        return {k: part.reshape(v.shape) for (k, v), part in
                zip(sums.items(), flat.split([v.numel() for v in sums.values()]))}

    def log(self, sums: dict, n_good: int) -> dict:
        """One line of metrics.jsonl (rank 0 writes it; every rank returns it)."""
        record = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
                  "images_seen": self.images_seen, **self.summarise(sums, n_good),
                  "lr": self.opt.param_groups[0]["lr"], "images_per_s": round(self.train_images_per_s, 1),
                  "seconds": round(self.elapsed, 2), "skipped_steps": self.skipped}
        if self.dist.is_main:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            self.board.scalars(record)
        return record

    def check_loss(self, loss: Optional[float]) -> None:
        """Stop a run whose logged loss is not finite, or so large that training has diverged."""
        if loss is None:
            return
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"the loss became {loss} by step {self.step}; stopping")
        if loss > DIVERGED_LOSS:
            raise NonFiniteLoss(f"the loss reached {loss:.3g} by step {self.step} (predicting zero scores about 1): "
                                f"training diverged; stopping (lower training.lr, now {self.cfg.training.lr:g})")

    def end_of_epoch(self) -> None:
        epoch = math.ceil(self.step / self.steps_per_epoch)
        # Weights first: a picture that fails or is interrupted must not cost the epoch.
        if epoch % self.cfg.training.checkpoint_every == 0 or self.step == self.total_steps:
            self.save(f"model_epoch_{epoch}.pt")
            self._prune()
        self.save("last.pt")
        if not self.cfg.training.sample_every and self.dist.is_main:
            self.board.image(self.draw(f"epoch_{epoch:03d}"), self.step)

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict:
        """Everything to rebuild the model and to resume its training."""
        extra = self.extra_state()
        saved = self.ema.model if self.ema is not None else self.model  # the weights people sample from
        for p in saved.parameters():
            if not torch.isfinite(p).all():
                raise NonFiniteLoss(f"non-finite weights at step {self.step}; not writing a checkpoint")
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "images_seen": self.images_seen,
            "seconds": self.elapsed,
            "cpu_seconds": self.cpu_elapsed,
            "noise_rng": self.noise_gen.get_state(),
            "params": self.params,
            "train_images_per_s": self.train_images_per_s,
            "device": str(self.device),
            "torch": str(torch.__version__),
            **({"ema": self.ema.model.state_dict()} if self.ema is not None else {}),
            **extra,
        }

    def save(self, name: str) -> Optional[Path]:
        """Write a checkpoint atomically (rank 0 only); a failed write leaves the old file intact."""
        if not self.dist.is_main:
            return None
        path = self.out_dir / "checkpoints" / name
        try:
            return save_checkpoint(self.state(), path)
        except OSError as e:
            raise write_error(path, e, f"earlier checkpoints in {path.parent} are intact") from None

    def _prune(self) -> None:
        keep = self.cfg.training.keep_last
        if keep <= 0:
            return
        for old in epoch_checkpoints(self.out_dir / "checkpoints")[:-keep]:
            old.unlink(missing_ok=True)

    def load_state(self, path: Path) -> None:
        """Continue exactly where a checkpoint stopped: weights, optimiser, step and RNG."""
        state = load_checkpoint(path, map_location=self.device)
        ema = {"ema": dict} if self.ema is not None else {}
        check_resume_fields(state, path, {**RESUME_FIELDS, **ema, **self.resume_fields})
        saved = config_from_dict(state["config"], source=str(path), stored=True)
        for section in self.resume_sections:
            if getattr(saved, section) != getattr(self.cfg, section):
                raise ConfigError(f"{path}: the checkpoint's '{section}' section differs from the config; "
                                  "cannot resume")
        load_weights(self.model, state["model"], path)
        if self.ema is not None:
            load_weights(self.ema.model, state["ema"], path, what="EMA")
        try:
            self.opt.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: optimizer state does not match ({e})") from None
        self.step = state["step"]
        self.images_seen = state.get("images_seen", self.step * self.global_batch)
        self.elapsed = float(state.get("seconds") or 0.0)
        self.cpu_elapsed = float(state.get("cpu_seconds") or 0.0)
        set_rng_state(self.noise_gen, state["noise_rng"], path)
        self.load_extra_state(state, path)
