"""What every backend does: raw detector output for a batch of letterboxed images."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np

from inspection.errors import UserError
from inspection.tiling import TileSpec


class OutOfMemory(RuntimeError):
    """The accelerator ran out of memory for this batch; the engine splits it and retries."""


class Backend(ABC):
    name: str
    device: str
    image_size: int
    class_names: list[str]
    model_path: Path  # the file that runs (the weights, or the .onnx chosen for them)
    max_batch: int = 64
    # Batches the engine may hand over at once, from as many threads (the backend must take
    # concurrent calls): more than one where the hardware gains from it.
    streams: int = 1
    # The batch the engine forms when none is asked for (None: max_batch).
    preferred_batch: int | None = None
    # The grid the model was trained on (inspection.tiling), which a station judges its parts
    # in; None: an untiled model, a part judged whole.
    tile: TileSpec | None = None

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) uint8 pixels, or float32 already in [0, 1] -> (B, 4 + classes, anchors)
        float32, boxes as cx, cy, w, h."""

    def infer_side_by_side(self, batch: np.ndarray) -> np.ndarray:
        """One of `streams` batches in flight at once: backends that run them side by side
        give each its share of the hardware."""
        return self.infer(batch)

    def describe(self) -> str:
        return f"{self.name} on {self.device}"


def read_tile(model_path: Path, read: Callable[[], TileSpec | None]) -> TileSpec | None:
    """A model's grid, or one line naming the model where its recorded grid cannot be used."""
    try:
        return read()
    except ValueError as exc:  # TileSpecError, or a recorded value that is not JSON
        raise UserError(f"{model_path}: {exc}") from exc
