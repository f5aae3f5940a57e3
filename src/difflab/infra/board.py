"""TensorBoard for a training run (training.tensorboard: true): the numbers of metrics.jsonl and the
sample grids, nothing else, so both views always agree (tests/test_training.py checks it)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .validation import ConfigError


class Board:
    """TensorBoard (training.tensorboard: true): metrics.jsonl's numbers and the sample grids, nothing else.

        tensorboard --logdir experiments
    """

    def __init__(self, folder: Optional[Path]):
        self.folder, self._writer = folder, None
        if folder is not None:
            try:
                import torch.utils.tensorboard  # noqa: F401
            except ImportError:
                raise ConfigError("training.tensorboard: true needs the tensorboard package: "
                                  "pip install tensorboard (or pip install -e .[tensorboard])") from None

    @property
    def writer(self):
        """The SummaryWriter, made on first use: only once the run's folder is claimed (runs.claim)."""
        if self._writer is None and self.folder is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.folder))
        return self._writer

    def scalars(self, record: dict) -> None:
        """Each number of a log record at its step; loss_by_t as one curve per tenth of t."""
        if self.folder is None:
            return
        for key, value in record.items():
            if key in ("step", "epoch"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"train/{key}", value, record["step"])
            elif key == "loss_by_t":
                for i, v in enumerate(value):
                    if v is not None:
                        self.writer.add_scalar(f"loss_by_t/{i / len(value):.1f}-{(i + 1) / len(value):.1f}", v,
                                               record["step"])

    def image(self, png: Optional[Path], step: int) -> None:
        """A picture draw() saved, as TensorBoard's image at this step."""
        if self.folder is None or png is None:
            return
        import numpy as np
        from PIL import Image

        self.writer.add_image(f"samples/{png.parent.name}", np.asarray(Image.open(png).convert("L")), step,
                              dataformats="HW")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
