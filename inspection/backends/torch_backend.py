"""PyTorch backend: CUDA with fp16 where a GPU is present, the CPU otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from inspection.backends.base import Backend, OutOfMemory
from inspection.detector import load_detector


class TorchBackend(Backend):
    name = "pytorch"

    def __init__(self, weights: Path, device: str = "cpu", image_size: int | None = None) -> None:
        detector = load_detector(weights)
        self.class_names = [detector.names[i] for i in sorted(detector.names)]
        ckpt = detector.ckpt if isinstance(detector.ckpt, dict) else {}
        self.image_size = image_size or int(ckpt.get("train_args", {}).get("imgsz", 640))
        self.device = device
        self.half = device.startswith("cuda")
        model = detector.model.float().fuse(verbose=False).eval().to(device)
        self.model = model.half() if self.half else model
        # Small batches on a CPU: the same throughput, a fraction of the latency (bench/results).
        self.max_batch = 64 if self.half else 4

    def infer(self, batch: np.ndarray) -> np.ndarray:
        # Pixels travel as uint8 and are scaled on the device: a quarter of the bytes to copy.
        tensor = torch.from_numpy(batch).to(self.device, non_blocking=True)
        if tensor.dtype == torch.uint8:
            tensor = tensor.float().div_(255.0)
        tensor = tensor.half() if self.half else tensor
        try:
            with torch.inference_mode():
                output = self.model(tensor)
        except torch.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise OutOfMemory(str(exc)) from exc
        output = output[0] if isinstance(output, tuple | list) else output
        return output.float().cpu().numpy()
