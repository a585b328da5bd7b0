"""ONNX Runtime backend: TensorRT, then CUDA, then the CPU execution provider, by availability.

Providers are always passed explicitly: onnxruntime-gpu would otherwise warn and guess.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inspection.backends.base import Backend, OutOfMemory, read_tile
from inspection.errors import UnloadableExport, UserError
from inspection.images import to_model_input
from inspection.settings import get_settings, network_threads
from inspection.tiling import tile_of_metadata


def choose_providers(
    device: str, available: list[str] | None = None
) -> list[str | tuple[str, dict]]:
    available = available if available is not None else ort.get_available_providers()
    providers: list[str | tuple[str, dict]] = []
    if device.startswith("cuda"):
        device_id = int(device.split(":")[1]) if ":" in device else 0
        if "TensorrtExecutionProvider" in available:
            providers.append(
                ("TensorrtExecutionProvider", {"device_id": device_id, "trt_fp16_enable": True})
            )
        if "CUDAExecutionProvider" in available:
            providers.append(("CUDAExecutionProvider", {"device_id": device_id}))
    providers.append("CPUExecutionProvider")
    return providers


def class_names_from_metadata(meta: dict[str, str]) -> list[str]:
    """A detector's classes from its ONNX metadata: ours, else ultralytics' own `names`."""
    if "defects.classes" in meta:
        return list(json.loads(meta["defects.classes"]))
    if "names" in meta:
        import ast

        by_index = ast.literal_eval(meta["names"])
        return [by_index[i] for i in sorted(by_index)]
    return []


class OnnxBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self, onnx_path: Path, device: str = "cpu", cpu_streams: int | None = None
    ) -> None:
        if not Path(onnx_path).is_file():
            raise UserError(f"ONNX model not found: {onnx_path}")
        self.model_path = Path(onnx_path)
        cores = network_threads()  # (a parallel run's worker: its share)
        if cpu_streams is None:
            cpu_streams = get_settings().cpu_streams
        # On a CPU, batches that queue up run side by side on a session whose calls each take
        # their share of the cores (a small network splits poorly across threads at a small
        # batch); a lone batch (a part inspected on its own) runs on every core, for latency.
        streams = max(1, min(cpu_streams or cores, cores)) if device == "cpu" else 1
        self.session = self._open(onnx_path, device, cores)
        self._side_by_side = (
            self._open(onnx_path, device, max(1, cores // streams)) if streams > 1 else None
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, str] = dict(meta)  # (what it was exported from, its classes)
        self.class_names = class_names_from_metadata(meta)
        self.tile = read_tile(self.model_path, lambda: tile_of_metadata(meta))
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        size = model_input.shape[-1]
        if isinstance(size, int):
            self.image_size = size
        else:  # dynamic axes: the size the model was trained at
            self.image_size = int(meta.get("defects.imgsz", "640"))
        batch_dim = model_input.shape[0]
        on_cpu = self.session.get_providers()[0] == "CPUExecutionProvider"
        # Small batches on a CPU: nearly the same throughput, a fraction of the latency.
        self.max_batch = 1 if isinstance(batch_dim, int) and batch_dim == 1 else 4 if on_cpu else 32
        self.half = "float16" in model_input.type
        active = self.session.get_providers()[0]
        self.device = {"CPUExecutionProvider": "cpu"}.get(active, f"{device} ({active})")
        self.streams = streams  # more than one only on a CPU, where the second session exists
        # With a batch per core, one part each keeps the latency down at the same throughput
        # (bench/results/inference_cpu.json); so on a single core (a parallel run's worker).
        self.preferred_batch = 1 if self.streams > 1 or (on_cpu and cores == 1) else None

    @staticmethod
    def _open(onnx_path: Path, device: str, threads: int) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Operators run one after another (the default sequential mode): no second pool of
        # threads beside the one above, whatever onnxruntime would size it by.
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if get_settings().onnx_spinning else "0"
        )
        try:
            return ort.InferenceSession(
                str(onnx_path), sess_options=options, providers=choose_providers(device)
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            # (A damaged export beside the weights stopped the station with no way out said.)
            raise UnloadableExport(onnx_path, str(exc)) from exc

    def describe(self) -> str:
        if self.streams > 1:
            return f"{self.name} on {self.device}, {self.streams} batches at once"
        return super().describe()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self.session, batch)

    def infer_side_by_side(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self._side_by_side or self.session, batch)

    def _run(self, session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
        feed = to_model_input(batch)
        feed = feed.astype(np.float16) if self.half else feed
        try:
            [output] = session.run(None, {self.input_name: feed})
        except Exception as exc:
            if "allocate" in str(exc).lower() or "out of memory" in str(exc).lower():
                raise OutOfMemory(str(exc)) from exc
            raise
        return output.astype(np.float32, copy=False)
