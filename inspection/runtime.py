"""Make torch, torchvision and ultralytics usable on every machine we ship to, before they load.

Three facts of the field drive this module:
- PyPI's torchvision wheel is built against CUDA torch; beside a CPU-only torch its compiled ops
  do not load and `import torchvision` dies with "operator torchvision::nms does not exist".
  Only NMS is needed by the product, so a pure-torch `torchvision::nms` (and its quantized twin,
  which torchvision's import also references) is registered then, and only then, when
  torchvision is first imported (`inspection.nms_fallback`).
- ultralytics reaches for the network (settings sync, fonts, weights, pip). Factory stations are
  offline, so it gets a config dir of our own, every integration off and a local font.
- ultralytics' import sets OMP_NUM_THREADS=1 for every process started after it: the variable
  is put back as it was once ultralytics is imported (`keep_threads_variable`).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import NoReturn


class _FirstImportHook(importlib.abc.MetaPathFinder):
    """Work of ours around a package's first import, from wherever it comes: the spec the other
    finders give, its loader wrapped so that `around` runs the package's own loading; the hook
    goes once `around` has run. `ready` is asked first: False leaves the import as it is."""

    def __init__(
        self,
        name: str,
        around: Callable[[Callable[[], None]], None],
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.name, self.around, self.ready = name, around, ready
        self._busy = False

    def find_spec(
        self,
        name: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if name != self.name or self._busy:  # (`ready` may look for the package too)
            return None
        self._busy = True
        try:
            if not self.ready():
                self.remove()  # the usual finders do the rest
                return None
            # (A find_spec alone imports nothing: the hook stays until the loader has run.)
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(name, path, target)
                if spec is not None:
                    if spec.loader is not None:
                        spec.loader = _LoadedAround(spec.loader, self)
                    return spec
            return None
        finally:
            self._busy = False

    def remove(self) -> None:
        sys.meta_path[:] = [finder for finder in sys.meta_path if finder is not self]


class _LoadedAround(importlib.abc.Loader):
    """A package's own loader, run inside its hook's `around`."""

    def __init__(self, loader: importlib.abc.Loader, hook: _FirstImportHook) -> None:
        self._loader, self._hook = loader, hook

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._hook.around(lambda: self._loader.exec_module(module))
        self._hook.remove()

    def __getattr__(self, name: str) -> object:  # resources, source, code: the loader's own
        return getattr(self._loader, name)


def _hook_first_import(name: str, hook: _FirstImportHook) -> None:
    """`hook` in place for `name`'s first import, unless it is imported or hooked already."""
    if name in sys.modules:
        return
    if not any(isinstance(f, _FirstImportHook) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, hook)


def _torchvision_ready() -> bool:
    """Whether torchvision needs the NMS fallback (registered now, where it does). Done at
    its first import, from wherever (ultralytics imports it too): the fallback needs torch, a
    second or more to import, which a command that never touches a model (`defects status`,
    `db`, `models`) and a parallel run's dealing process do without."""
    from inspection import nms_fallback

    return nms_fallback.define_ops()


def _then_let_dispatch(load: Callable[[], None]) -> None:
    """torchvision's own loading, then the fallback's last step once the package is loaded."""
    load()
    from inspection import nms_fallback

    nms_fallback.let_torchvision_dispatch()


def ensure_torchvision_ops() -> None:
    """See that torchvision imports on this machine: at its first import, or now where it is
    imported already (it then loaded, its ops or the fallback's)."""
    _hook_first_import(
        "torchvision", _FirstImportHook("torchvision", _then_let_dispatch, _torchvision_ready)
    )


def _threads_variable_kept(load: Callable[[], None]) -> None:
    """ultralytics' import sets OMP_NUM_THREADS=1 in os.environ where it is unset ("reduced
    CPU utilization during training"): every process started after it inherited the variable
    (a training the Models page starts, a batch's workers, the engine's decoding processes)
    and ran torch on one thread where nothing set its count (a spawned worker: 1 thread
    against 2 on a 2-core station), as did this process where ultralytics imported torch.
    The variable is put back as it was once ultralytics is imported, and torch is imported
    just before it, so that its OpenMP reads the variable as it was too."""
    import torch  # noqa: F401 - ultralytics imports it at once: here, before the variable is set

    before = os.environ.get("OMP_NUM_THREADS")
    try:
        load()
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


def keep_threads_variable() -> None:
    """See that importing ultralytics leaves OMP_NUM_THREADS as it finds it."""
    _hook_first_import("ultralytics", _FirstImportHook("ultralytics", _threads_variable_kept))


# Every integration ultralytics could phone home through, all off.
_OFFLINE_SETTINGS = {
    "sync": False,
    "api_key": "",
    "openai_api_key": "",
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "vscode_msg": False,
    "openvino_msg": False,
}
_FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")


def configure_ultralytics(config_dir: Path, runs_dir: Path) -> None:
    """Point ultralytics at our config dir, offline, with no auto-install, before it is imported."""
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir.resolve())
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    settings_file = config_dir / "Ultralytics" / "settings.json"
    settings_file.parent.mkdir(parents=True, exist_ok=True)
    current: dict[str, object] = {}
    if settings_file.exists():
        try:
            current = json.loads(settings_file.read_text())
        except (OSError, json.JSONDecodeError):
            current = {}
    wanted = {
        "settings_version": current.get("settings_version", "0.0.8"),
        "datasets_dir": str(runs_dir.resolve().parent / "datasets"),
        "weights_dir": str(runs_dir.resolve() / "weights"),
        "runs_dir": str(runs_dir.resolve()),
        "uuid": current.get("uuid", "0" * 64),
        **_OFFLINE_SETTINGS,
    }
    if current != {**current, **wanted}:
        settings_file.write_text(json.dumps({**current, **wanted}, indent=2))
    # ultralytics' plotting asks for Arial and downloads it when missing: hand it the DejaVu Sans
    # that matplotlib ships, under the names it asks for.
    matplotlib_spec = importlib.util.find_spec("matplotlib")
    if matplotlib_spec and matplotlib_spec.origin:
        dejavu = (
            Path(matplotlib_spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        )
        for sub in ("", "Ultralytics"):
            for name in _FONT_NAMES:
                target = config_dir / sub / name
                if dejavu.exists() and not target.exists():
                    _copy_whole(dejavu, target)


def _copy_whole(source: Path, target: Path) -> None:
    """Copied under another name and renamed: a copy a full disk cut short was taken for the
    font at every start after, and ultralytics' plotting could not read it."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def enforce_offline_settings() -> None:
    """After import, ultralytics may have migrated its settings schema: switch integrations off again."""
    from ultralytics.utils import SETTINGS

    changes = {k: v for k, v in _OFFLINE_SETTINGS.items() if k in SETTINGS and SETTINGS[k] != v}
    if changes:
        SETTINGS.update(changes)


def prepare_runtime(config_dir: Path, runs_dir: Path) -> None:
    ensure_torchvision_ops()
    keep_threads_variable()
    configure_ultralytics(config_dir, runs_dir)


def end_process(code: int | str | None = 0) -> NoReturn:
    """End this process now, without the interpreter's teardown: torch's and the other
    libraries' keep nothing and take a second or more (a `defects` command 2.645 s against
    3.683 s, bench/results/cli_exit_cpu.json; two workers' exit 0.0 s against 1.2 to 1.5 s,
    worker_exit_cpu.txt). Only for a process whose work is written and committed, and whose
    threads that write and processes it started are joined: what is left (a background WAL
    checkpoint, which SQLite finishes itself later; daemon threads) may stop anywhere."""
    import logging

    logging.shutdown()  # (handlers flushed, as at a normal exit)
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        # Semaphores of multiprocessing queues and events are unlinked by finalizers of
        # priority 0 that a normal exit runs: skipped, a run stopped with workers ended with
        # "resource_tracker: There appear to be 4 leaked semaphore objects". (Those of
        # negative priority, which join queue threads, may block: still skipped.)
        util._run_finalizers(0)
    if isinstance(code, str):  # sys.exit("message"), as a library may end
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
