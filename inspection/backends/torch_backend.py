"""PyTorch backend: CUDA with fp16 where a GPU is present, the CPU otherwise.

On a GPU the forward pass of each batch shape is recorded once as a CUDA graph and replayed:
a small detector at a small batch spends most of its eager forward launching a few hundred
kernels from Python, which a replay does in one call. torch.compile's "reduce-overhead" mode
does the same but needs a compiler toolchain on the station and minutes of compiling; the
recording here is the few lines PyTorch documents for it (torch.cuda.graphs).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from inspection.backends.base import Backend, OutOfMemory, read_tile
from inspection.detector import load_detector
from inspection.settings import get_settings
from inspection.tiling import tile_of_checkpoint

logger = logging.getLogger(__name__)

# Input shapes recorded at most (batch sizes 1, 2, 4 ... 128 of one image size); others run
# eagerly, so that an odd stream of shapes cannot fill the GPU's memory.
MAX_GRAPHS = 8
WARMUP_PASSES = 3  # eager passes on a side stream before recording, as PyTorch asks


def recorded_batch(size: int) -> int:
    """The recorded batch a batch of `size` runs in: the next power of two. A run's last partial
    batch, a batch split after an out-of-memory error or a dashboard upload of any count then
    replays one of a few graphs, padded, instead of running eagerly or recording a graph each;
    on a GPU the padding's extra images cost far less than an eager pass's launches."""
    return 1 << (size - 1).bit_length()


class CapturedForward:
    """One input shape and dtype's forward pass, recorded as a CUDA graph.

    Inputs are copied into a fixed pinned host buffer and a fixed device buffer, the graph is
    replayed, and its fixed output is copied back: one thread at a time (the backend's lock).
    A smaller batch fills the first rows; the rows after it (left from earlier batches) are
    computed and dropped, each image's output depending on that image alone.
    """

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        shape: tuple[int, ...],
        dtype: np.dtype,
        device: str,
    ) -> None:
        torch_dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
        self.host = torch.empty(shape, dtype=torch_dtype, pin_memory=True)
        self.device_input = torch.zeros(shape, dtype=torch_dtype, device=device)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(WARMUP_PASSES):
                forward(self.device_input)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.output = forward(self.device_input)

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.host.numpy()[: len(batch)] = batch
        self.device_input.copy_(self.host, non_blocking=True)
        self.graph.replay()
        return self.output[: len(batch)].float().cpu().numpy()  # waits for the replay


class TorchBackend(Backend):
    name = "pytorch"

    def __init__(
        self,
        weights: Path,
        device: str = "cpu",
        image_size: int | None = None,
        cuda_graphs: bool | None = None,
        gpu_streams: int | None = None,
    ) -> None:
        detector = load_detector(weights)
        self.model_path = Path(weights)
        self.class_names = [detector.names[i] for i in sorted(detector.names)]
        ckpt = detector.ckpt if isinstance(detector.ckpt, dict) else {}
        self.image_size = image_size or int(ckpt.get("train_args", {}).get("imgsz", 640))
        self.tile = read_tile(self.model_path, lambda: tile_of_checkpoint(ckpt))
        self.device = device
        self.half = device.startswith("cuda")
        model = detector.model.float().fuse(verbose=False).eval().to(device)
        self.model = model.half() if self.half else model
        # Small batches on a CPU: the same throughput, a fraction of the latency (bench/results).
        self.max_batch = 64 if self.half else 4
        settings = get_settings()
        if cuda_graphs is None:
            cuda_graphs = settings.cuda_graphs
        # On a GPU, batches in flight at once: the engine finishes one (NMS, verdicts) on the
        # CPU while the next runs. On a CPU, torch's threads are the process's: one at a time.
        on_gpu = device.startswith("cuda")
        self.streams = max(1, gpu_streams or settings.gpu_streams) if on_gpu else 1
        self.cuda_graphs = bool(cuda_graphs) and on_gpu
        # None: recording that shape failed, it runs eagerly from then on.
        self._graphs: dict[tuple[tuple[int, ...], str], CapturedForward | None] = {}
        # One forward pass at a time: a recorded graph has one set of buffers, and the model's
        # head caches its anchors in the module. The GPU runs them one after the other anyway.
        self._lock = threading.Lock()
        # Tensors the model replaces when the input shape changes (ultralytics' Detect head
        # rebuilds its anchors for a new batch shape): a recorded graph reads them where they
        # were, so the old ones must live as long as the graph.
        self._kept_alive: list[torch.Tensor] = []

    def describe(self) -> str:
        return (
            super().describe()
            + (", CUDA graphs" if self.cuda_graphs else "")
            + (f", {self.streams} batches in flight" if self.streams > 1 else "")
        )

    def _forward(self, tensor: torch.Tensor) -> torch.Tensor:
        """Device tensor (uint8 pixels or floats in [0, 1]) -> raw detector output."""
        if tensor.dtype == torch.uint8:
            # Pixels travel as uint8 and are scaled on the device: a quarter of the bytes.
            tensor = tensor.float().div_(255.0)
        tensor = tensor.half() if self.half else tensor.float()
        output = self.model(tensor)
        return output[0] if isinstance(output, tuple | list) else output

    def _capture(self, shape: tuple[int, ...], dtype: np.dtype) -> CapturedForward:
        captured = CapturedForward(self._forward, shape, dtype, self.device)
        self._kept_alive.extend(
            value
            for module in self.model.modules()
            for value in (getattr(module, "anchors", None), getattr(module, "strides", None))
            if isinstance(value, torch.Tensor)
        )
        return captured

    def _graph_for(self, batch: np.ndarray) -> CapturedForward | None:
        key = ((recorded_batch(len(batch)), *batch.shape[1:]), batch.dtype.str)
        if key in self._graphs:
            return self._graphs[key]
        if sum(graph is not None for graph in self._graphs.values()) >= MAX_GRAPHS:
            return None
        try:
            graph: CapturedForward | None = self._capture(key[0], batch.dtype)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return None  # not remembered: the eager pass splits the batch, a later one may fit
        except RuntimeError as exc:  # a model whose forward cannot be recorded still runs
            logger.warning(
                "CUDA graph for batch shape %s failed (%s); running eagerly", key[0], exc
            )
            graph = None
        self._graphs[key] = graph
        return graph

    def infer(self, batch: np.ndarray) -> np.ndarray:
        try:
            with self._lock:
                graph = self._graph_for(batch) if self.cuda_graphs else None
                if graph is not None:
                    return graph.run(batch)
                tensor = torch.from_numpy(batch).to(self.device, non_blocking=True)
                with torch.inference_mode():
                    output = self._forward(tensor)
                return output.float().cpu().numpy()
        except torch.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise OutOfMemory(str(exc)) from exc
