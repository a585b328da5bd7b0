"""The product's one settings object: the only place that reads the environment."""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path, PureWindowsPath

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inspection.errors import UserError


class Settings(BaseSettings):
    """Configuration from `DEFECTS_*` environment variables (or a `.env` file)."""

    model_config = SettingsConfigDict(env_prefix="DEFECTS_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path("data"),
        description="Images (by content hash), datasets, model versions and training runs.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default: a SQLite file inside the data directory.",
    )
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    prepare_processes: int = Field(
        default=0,
        ge=0,
        le=64,
        description="worker processes that decode parts (0: threads). For GPU stations, where "
        "the code around the network limits throughput; measure with bench/inference.py.",
    )
    cpu_streams: int = Field(
        default=0,
        ge=0,
        le=256,
        description="batches ONNX Runtime infers at once on a CPU when parts queue up, each on "
        "its share of the cores (0: one per core, each single-threaded; 1: one batch on every "
        "core). For a small network, independent single-threaded batches keep the cores busier "
        "than one batch split across them; a part inspected on its own still runs on every "
        "core (measure with bench/inference.py --cpu-streams 1 0).",
    )
    onnx_spinning: bool = Field(
        default=True,
        description="ONNX Runtime's CPU threads spin between operators instead of sleeping: "
        "faster on a station that runs nothing else, much slower when other programs share its "
        "cores (measure with bench/inference.py).",
    )

    cuda_graphs: bool = Field(
        default=True,
        description="on a GPU, the PyTorch backend records each batch shape's forward pass as a "
        "CUDA graph and replays it: a small model at a small batch otherwise spends most of its "
        "time launching kernels (measure with bench/inference.py --cuda-graphs 0 1).",
    )

    gpu_streams: int = Field(
        default=1,
        ge=1,
        le=8,
        description="batches the PyTorch backend has in flight at once on a GPU: with 2, one "
        "batch's results are worked out on the CPU while the next runs on the GPU (measure "
        "with bench/inference.py --gpu-streams 1 2).",
    )

    chunk_batches: int = Field(
        default=4,
        ge=1,
        le=64,
        description="a batch run writes one transaction per chunk of parts: 64 parts, or this "
        "many of the engine's batches where a batch is as large (a GPU's batch of 64). A chunk "
        "of one batch is decoded, then inferred, then worked out, with the GPU idle between; "
        "in a chunk of several, the next batch is decoded while one is inferred (measure with "
        'CHUNKS="1 4 1 4" bash bench/gpu_batch_cli.sh; on an H100, 8 workers, 100000 parts: '
        "3222 parts/s with 4 against 2894 with 1, bench/results/batch_chunks_gpu_100k.txt).",
    )

    max_megapixels: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="the largest part image judged or imported, in megapixels; larger ones are "
        "refused with their size before they are decoded (a decompression bomb). A line-scan "
        "strip can be larger: each part in flight is held decoded, about this many MB for a "
        "grayscale image and three times that for a colour one.",
    )

    db_outage_seconds: float = Field(
        default=120.0,
        ge=0,
        allow_inf_nan=False,
        description="how long a batch run or a watch waits for a database that went away "
        "mid-run (a PostgreSQL restart or failover, a SQLite file locked past its busy "
        "timeout), trying again with its results held, before it stops with the error (0: "
        "stop at once). The database must answer when the run starts; a connection it drops "
        "then (a restart) is waited for too.",
    )

    @field_validator("db_outage_seconds", mode="before")
    @classmethod
    def _finite_outage(cls, value: object) -> object:
        """A number of seconds: `inf` (or `1e400`, read as inf) was taken for one, and a run
        then waited for ever, never stopping with the error the setting promises; `nan` was
        refused as "less than 0"."""
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return value  # (pydantic's own message: not a number)
        if not math.isfinite(number):
            raise ValueError(
                "a finite number of seconds is needed (0: stop at once; a long wait: "
                "a large number, 86400 for a day)"
            )
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        """Made absolute here, as the database's path is: a part's image is recorded by its
        path, and one stored under a relative DEFECTS_DATA_DIR was recorded relative to the
        folder the batch ran in, so the Review page, the export of reviews and the backtest
        run from another folder found it missing (the same database, found by absolute path).
        A file there is refused by name: it ended every command in a traceback at start-up."""
        value = value.absolute()
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} is a file, not a folder")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in {"auto", "cpu", "cuda"}:
            return value
        if value.startswith("cuda:") and value[5:].replace(",", "").isdigit():
            return value
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {value!r}")

    @property
    def resolved_database_url(self) -> str:
        """DEFECTS_DATABASE_URL, or the SQLite file in the data folder, which is made here where
        missing (a first start): the product's own folder. A folder named in a URL the user
        gave is not made (a mistyped one gave a new, empty database); the engine says so."""
        if self.database_url:
            return self.database_url
        path = (self.data_dir / "defects.db").resolve()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SettingsError(
                f"cannot make the data folder {path.parent} (DEFECTS_DATA_DIR): "
                f"{exc.strerror or exc}"
            ) from exc
        return f"sqlite:///{path}"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def ultralytics_config_dir(self) -> Path:
        return self.data_dir / "ultralytics"


class SettingsError(ValueError):
    """A DEFECTS_* variable (or .env entry) holds a value the product cannot use."""


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        variable = "DEFECTS_" + str(error["loc"][0]).upper() if error["loc"] else "a setting"
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{variable}={error.get('input')!r}: {message}")
    return "invalid setting " + "; ".join(problems)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings are read once per process; tests clear the cache after changing the environment.
    A bad value raises SettingsError naming the variable, for a one-line message (not cached:
    every caller hears of it)."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def usable_cores() -> list[int]:
    """The cores this process may run on: a container's or `taskset`'s limit, or the share a
    parallel run's worker keeps to, not every core of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


# A parallel run's worker: the threads its network runs on (None: a lone process, every core
# it may use). Set once as the worker starts (`share_network_threads`).
_network_threads: int | None = None


def share_network_threads(threads: int) -> None:
    """This process is one of a parallel run's workers, its network to run on `threads`
    threads: with more workers than cores none is pinned, and each one's network on every core
    asked the cores for workers x cores threads, slower than one each."""
    global _network_threads
    _network_threads = max(1, threads)


def network_threads() -> int:
    """The threads a network (ONNX Runtime's session) may run on in this process: a worker's
    share of the cores, else every core the process may use."""
    return _network_threads or len(usable_cores())


def resolve_device(choice: str | None = None) -> str:
    """Turn 'auto' into 'cuda:0' where a GPU is visible and 'cpu' otherwise."""
    import torch

    # (Named where it came from: "use --device cpu" named a flag the user had not passed.)
    given = bool(choice)
    remedy = "use --device cpu (or auto)" if given else "set DEFECTS_DEVICE=cpu (or --device cpu)"
    try:  # (the rule the DEFECTS_DEVICE setting is checked by, for --device too)
        choice = Settings._check_device(choice or get_settings().device)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if "," in choice:
        # (Only a detector's training takes several GPUs, through ultralytics, which reads the
        # list itself; here torch failed on it in a traceback.)
        named = f"--device {choice}" if given else f"DEFECTS_DEVICE={choice}"
        raise UserError(
            f"{named} lists several GPUs: only `defects train detector` (and distill detector) "
            "uses several; inspection, evaluation, export and a classifier's training run on "
            "one, cuda:N (`batch --workers N` spreads a batch over processes)"
        )
    if choice == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {choice!r} was asked for but no CUDA GPU is visible: {remedy}")
    indices = choice.removeprefix("cuda:").split(",") if choice.startswith("cuda:") else []
    if any(int(i) >= torch.cuda.device_count() for i in indices if i):
        raise UserError(
            f"device {choice!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
        )
    return choice


def same_place_under(recorded: str, folder: Path, depth: int) -> Path:
    """The last `depth` parts of a path recorded on another machine (or before the data folder
    moved), under this machine's `folder`: where the product keeps the same file here. A path
    recorded on Windows is split by Windows' separators."""
    written = PureWindowsPath(recorded) if "\\" in recorded else Path(recorded)
    return folder.joinpath(*written.parts[-depth:])
