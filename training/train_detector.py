"""Train or fine-tune a defect detector with ultralytics, offline, and register the result.

Run as `defects train detector`. ultralytics' trainer does the work (multi-GPU included: pass a
device list); this module chooses augmentation for surface images, keeps everything offline,
records the job and registers the best weights as a candidate model version.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pickle
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import torch

import inspection  # noqa: F401 - runtime preparation first
from db.models import JobStatus, ModelKind, ModelVersion, TrainingJob, utcnow
from db.registry import get_model_version
from db.session import session_scope
from inspection.detector import (
    architecture_of,
    architectures,
    build_detector,
    check_architecture,
    load_detector,
)
from inspection.errors import Stopped, UserError, first_sentence
from inspection.images import allow_pixels_up_to, failed_write, max_pixels, write_fix
from inspection.settings import get_settings, usable_cores
from inspection.tiling import CHECKPOINT_KEY, TileSpec
from training.datasets import (
    check_folder_name,
    check_split_images,
    check_trainable,
    dataset_tile,
    dataset_yaml,
)
from training.jobs import check_runs_folder, process_start, record_job_end, this_host
from training.versions import register_model_version, registration_scope, weights_file

# Grayscale surface images: no hue or saturation jitter (there is no colour), brightness jitter
# for lighting drift, both flips (a scratch has no up or down), mosaic for context and scale.
SURFACE_AUGMENTATION: dict[str, Any] = {
    "hsv_h": 0.0,
    "hsv_s": 0.0,
    "hsv_v": 0.3,
    "fliplr": 0.5,
    "flipud": 0.5,
    "degrees": 0.0,
    "translate": 0.1,
    "scale": 0.5,
    "mosaic": 1.0,
    "mixup": 0.0,
}


def offline_amp_check(model: torch.nn.Module) -> bool:
    """ultralytics' AMP check downloads a reference model; this one compares the model being
    trained in fp32 and under autocast on one random batch, with nothing fetched."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        return False
    if device.type != "cuda":
        return False
    probe = copy.deepcopy(model).eval()
    image = torch.rand(1, 3, 256, 256, device=device)
    with torch.no_grad():
        reference = probe(image)
        reference = reference[0] if isinstance(reference, tuple | list) else reference
        with torch.autocast(device_type="cuda"):
            mixed = probe(image)
            mixed = mixed[0] if isinstance(mixed, tuple | list) else mixed
    return bool(
        torch.isfinite(mixed).all()
        and torch.allclose(reference, mixed.float(), atol=0.5, rtol=0.05)
    )


def read_results_csv_without_polars(trainer: Any) -> dict[str, list[float | str]]:
    """ultralytics reads its results.csv with polars when it saves each checkpoint, and fails
    where polars is absent (GPU images often lack it; it is only a plotting dependency there).
    The file is a plain numeric CSV, which the standard library reads as well."""
    import csv

    try:
        with open(trainer.csv, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return {}
    columns: dict[str, list[float | str]] = {}
    for row in rows:
        for name, value in row.items():
            name = (name or "").strip()
            try:
                columns.setdefault(name, []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(name, []).append(value)
    return columns


def _install_offline_trainer_patches() -> None:
    from importlib.util import find_spec

    from ultralytics.engine import trainer

    trainer.check_amp = offline_amp_check
    if find_spec("polars") is None:
        trainer.BaseTrainer.read_results_csv = read_results_csv_without_polars


_install_offline_trainer_patches()


DEFAULT_ARCHITECTURE = "defect-yolo-s"
DEFAULT_IMGSZ = 256


def training_size(request_imgsz: int | None, tile: TileSpec | None) -> int:
    """The image size a run trains at: the one asked for, else a tile's own size (shrunk or
    grown to another, a tile would lose the detail tiling keeps), else DEFAULT_IMGSZ."""
    if request_imgsz is not None:
        return request_imgsz
    return tile.size if tile is not None else DEFAULT_IMGSZ


def record_tile(weights: Path, tile: TileSpec | None) -> None:
    """The grid of the dataset a checkpoint was trained on, written into it (`CHECKPOINT_KEY`),
    so that stations given the weights cut parts by it; removed for an untiled dataset (a
    model fine-tuned from a tiled one onto whole images judges whole images)."""
    checkpoint = torch.load(weights, map_location="cpu", weights_only=False)
    value = tile.to_json() if tile is not None else None
    if checkpoint.get(CHECKPOINT_KEY) == value:
        return
    if value is None:
        checkpoint.pop(CHECKPOINT_KEY, None)
    else:
        checkpoint[CHECKPOINT_KEY] = value
    written = weights.with_name(f".{weights.name}.{os.getpid()}.partial")
    try:
        torch.save(checkpoint, written)
        written.replace(weights)  # (whole or not at all)
    except BaseException:
        written.unlink(missing_ok=True)  # (a half file a full disk left would hold its space)
        raise


@dataclass(frozen=True)
class TrainRequest:
    data: str
    architecture: str | None = None  # DEFAULT_ARCHITECTURE; with from_model, that one's
    epochs: int = 100
    # None: a tiled dataset's tile size (a tile learned at its own resolution, as stations
    # judge it), else DEFAULT_IMGSZ.
    imgsz: int | None = None
    batch: int = 16
    device: str | None = None
    from_model: str | None = None
    resume: bool = False
    name: str | None = None
    workers: int = 2
    # A wall-time budget: ultralytics re-plans the epochs after the first one so that the learning
    # rate schedule and the last mosaic-free epochs end inside it; `epochs` is then ignored.
    hours: float | None = None
    patience: int = 50
    seed: int = 0
    plots: bool = False
    teacher: str | None = None  # model version to distill from (ultralytics' distill_model)
    # "feature": ultralytics' score-weighted L2 on the neck; "cwd": channel-wise distillation.
    distill_method: Literal["feature", "cwd"] = "feature"
    distill_weight: float | None = None  # None: the method's own default

    extra: tuple[tuple[str, Any], ...] = ()


def _distill_arguments(request: TrainRequest, teacher_weights: str) -> dict[str, Any]:
    """The teacher, and the loss weight where ultralytics' own default (for its loss) is not it."""
    arguments: dict[str, Any] = {"distill_model": teacher_weights}
    if request.distill_weight is not None:
        arguments["dis"] = request.distill_weight
    elif request.distill_method == "cwd":
        from training.distill_cwd import DEFAULT_WEIGHT

        arguments["dis"] = DEFAULT_WEIGHT
    return arguments


def _distill_trainer(request: TrainRequest) -> dict[str, Any]:
    """`trainer=` for YOLO.train when the distillation is ours rather than ultralytics'."""
    if not request.teacher or request.distill_method == "feature":
        return {}
    from training.distill_cwd import ChannelWiseDistillationTrainer

    return {"trainer": ChannelWiseDistillationTrainer}


def _job_progress_callbacks(url: str, job_id: int) -> dict[str, Callable[[Any], None]]:
    """Epoch progress into the job record; plain data only, so DDP can pickle it.

    ultralytics also fires on_fit_epoch_end for its final validation of best.pt, its epoch
    counter one past the last epoch (the log ended "epoch 26/25"): only an epoch that trained,
    as on_train_epoch_end saw it, is logged."""
    trained: list[int] = []  # the epoch on_train_epoch_end saw last

    def on_train_epoch_end(trainer) -> None:  # type: ignore[no-untyped-def]
        trained[:] = [trainer.epoch]

    def on_fit_epoch_end(trainer) -> None:  # type: ignore[no-untyped-def]
        if trained != [trainer.epoch]:
            return  # the final validation, not an epoch
        epochs = trainer.epochs  # re-planned by ultralytics under a time budget
        with session_scope(url) as session:
            job = session.get(TrainingJob, job_id)
            if job is not None:
                job.progress = min(1.0, (trainer.epoch + 1) / max(epochs, 1))
                fitness = trainer.metrics.get("metrics/mAP50(B)") if trainer.metrics else None
                job.log = (job.log or "") + f"epoch {trainer.epoch + 1}/{epochs} mAP50 {fitness}\n"

    return {"on_train_epoch_end": on_train_epoch_end, "on_fit_epoch_end": on_fit_epoch_end}


def _first_epoch_cut_short(cut: list[tuple[int, int]]) -> dict[str, Callable[[Any], None]]:
    """Notes in `cut` (batches trained, batches in an epoch) where the time budget ended the
    first epoch part way: ultralytics fits the epochs to the budget only after a whole one, and
    a budget shorter than that stopped it after a batch or so, taken in warm-up at a learning
    rate near 0; the model registered had learned nothing, with no word but "epochs: 1"."""
    ended: list[int] = [0]  # batches of this epoch on_train_batch_end saw

    def on_train_epoch_start(trainer) -> None:  # type: ignore[no-untyped-def]
        ended[0] = 0

    def on_train_batch_end(trainer) -> None:  # type: ignore[no-untyped-def]
        ended[0] += 1

    def on_train_epoch_end(trainer) -> None:  # type: ignore[no-untyped-def]
        batches = len(trainer.train_loader)
        # (The budget's stop breaks out before on_train_batch_end, after the batch trained.)
        trained = ended[0] + 1 if trainer.stop and ended[0] < batches else ended[0]
        if trainer.args.time and trainer.epoch == 0 and trained < batches:  # (not a resume's)
            cut[:] = [(trained, batches)]

    return {
        "on_train_epoch_start": on_train_epoch_start,
        "on_train_batch_end": on_train_batch_end,
        "on_train_epoch_end": on_train_epoch_end,
    }


def refuse_other_classes(
    version: ModelVersion, data: str, class_names: list[str], use: str
) -> None:
    """A detector fine-tuned from, or distilled from, must know the dataset's classes in its
    order; the dataset may add new ones after them (a new defect type: see `extend_classes`).
    Checked by training and, before it starts a training, by the Models page. A class renamed,
    reordered or retired is refused: its learned outputs would be taught under another name."""
    known = list(version.classes)
    if class_names[: len(known)] != known:
        raise UserError(
            f"{version.name} knows {known}, {data!r} labels {class_names}: {use} keeps the "
            "classes in their order and only adds new ones after them; for a class renamed, "
            "reordered or retired, train from scratch instead"
        )


def check_teacher_loads(name: str, weights: Path) -> None:
    """A teacher's weights loaded once before the job is recorded: ultralytics loads them only
    inside its trainer, where a damaged file (cut short, overwritten) ended in its traceback
    or in a line that named no file, and left a failed job and an empty run behind."""
    try:
        load_detector(weights)
    except UserError as exc:
        raise UserError(
            f"teacher {name}: {exc}; restore its file from a backup, "
            "or distill from another version"
        ) from exc


def load_base(name: str, weights: Path) -> Any:
    """The version a training starts from (`--from`), loaded before the job is recorded, as a
    teacher's is: a damaged file (cut short, overwritten) was opened only after it, and left a
    failed job behind. Returned to be trained, not loaded a second time."""
    try:
        return load_detector(weights)
    except UserError as exc:
        raise UserError(
            f"--from {name}: {exc}; restore its file from a backup, or start from another version"
        ) from exc


def extend_classes(model: Any, class_names: list[str]) -> None:
    """`model` (a YOLO detector) made to output `class_names`, its own classes followed by new
    ones, in place: the head rebuilt for the new number of classes, every weight whose shape
    still fits carried over, and the old classes' rows of the class-score convolutions too,
    so the old classes keep their learned scores from the first step of the fine-tuning; the
    new classes' rows start as ultralytics starts a new head (`bias_init`).

    Without it ultralytics' trainer rebuilt the head and dropped those convolutions, their
    shape changed, unless its own remapping by class name (`cls_remap`) happened to run."""
    from ultralytics.nn.tasks import DetectionModel

    old = model.model
    known = [old.names[i] for i in sorted(old.names)]
    if class_names == known:
        return
    if class_names[: len(known)] != known:
        raise UserError(f"{class_names} do not begin with the detector's classes {known}")
    grown = DetectionModel(copy.deepcopy(old.yaml), nc=len(class_names), verbose=False)
    # (Named after the load: ultralytics then leaves the class rows to the copy by index below,
    # rather than remapping them by names it compares in lower case.)
    grown.load(old, verbose=False)
    grown.names = dict(enumerate(class_names))
    head, old_head = grown.model[-1], old.model[-1]
    with torch.no_grad():
        for attr in ("cv3", "one2one_cv3"):
            branches, old_branches = getattr(head, attr, None), getattr(old_head, attr, None)
            if branches is None or old_branches is None:
                continue
            for branch, old_branch in zip(branches, old_branches, strict=True):
                conv, old_conv = branch[-1], old_branch[-1]
                if conv.weight.shape[1:] == old_conv.weight.shape[1:]:
                    conv.weight[: len(known)] = old_conv.weight.float()
                    conv.bias[: len(known)] = old_conv.bias.float()
    if hasattr(old, "args"):
        grown.args = old.args
    model.model = grown


def _device_argument(device: str | None) -> str:
    """The device as ultralytics takes it ("cpu", "0" or "0,1" for GPUs), checked here, before
    the job is recorded: a GPU asked for where torch sees none was refused by ultralytics after
    it, in a paragraph that named `device=0` for `--device cuda`, and left a failed job."""
    from inspection.settings import resolve_device

    given = device is not None
    chosen = (device or get_settings().device).strip().lower()
    named = f"--device {chosen}" if given else f"DEFECTS_DEVICE={chosen}"
    if chosen == "auto":
        return "0" if resolve_device("auto").startswith("cuda") else "cpu"
    if chosen == "cpu":
        return chosen
    gpus = "0" if chosen == "cuda" else chosen.removeprefix("cuda:")
    if not all(index.isdigit() for index in gpus.split(",")):
        raise UserError(f"{named}: a device is cpu, cuda, cuda:N (or N), or GPUs such as 0,1")
    if not torch.cuda.is_available():
        remedy = "--device cpu" if given else "DEFECTS_DEVICE=cpu (or --device cpu)"
        raise UserError(f"{named}: no CUDA GPU is visible on this machine: train with {remedy}")
    if any(int(index) >= torch.cuda.device_count() for index in gpus.split(",")):
        raise UserError(f"{named}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return gpus


LINEAGE_FILE = "defects_lineage.json"  # in a run's folder: its teacher, for a resume


def _lineage_callback(  # type: ignore[no-untyped-def]
    teacher: str | None,
    method: str | None,
    base: str | None = None,
    data: str | None = None,
    job: int | None = None,
):
    """Writes, as a run starts, which teacher (if any) it learns from, which version it
    fine-tunes (a resume has no --from: its version's notes lost where it came from), which
    dataset it trains on (`--resume --name` of another's run) and which job runs it (its
    resume's job names that one); plain data, as DDP pickles callbacks."""

    def on_pretrain_routine_start(trainer) -> None:  # type: ignore[no-untyped-def]
        path = Path(trainer.save_dir) / LINEAGE_FILE
        if not path.exists():  # (a resume keeps the run's own)
            path.parent.mkdir(parents=True, exist_ok=True)
            lineage = {"teacher": teacher, "method": method, "from": base, "data": data}
            path.write_text(json.dumps({**lineage, "job": job}))

    return on_pretrain_routine_start


def _lineage(run: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((run / LINEAGE_FILE).read_text()))
    except (OSError, ValueError):
        return None  # a run from before the file (its lineage unknown)


def _registered(run: Path) -> bool:
    """Whether the run finished and was registered (`_keep_history_only`): its weights are
    gone, the version's copy in the model store holds them."""
    return bool((_lineage(run) or {}).get("registered"))


def _note_job(run: Path, job_id: int) -> None:
    """The run's lineage names `job_id` as the job that runs it now, so that the next resume's
    job names this one (`resumes_job`): the job stopped stayed "cancelled" in the job list,
    with no word of the job that went on with its run. Best effort: the training goes on
    without it."""
    _add_to_lineage(run, job=job_id)


def _add_to_lineage(run: Path, **entries: object) -> bool:
    """The run's lineage with `entries` added, replaced whole (a partial file renamed over
    it): False, the lineage as it was, where it could not be written."""
    lineage = {**(_lineage(run) or {}), **entries}
    written = run / f".{LINEAGE_FILE}.{os.getpid()}.partial"
    try:
        written.write_text(json.dumps(lineage))
        written.replace(run / LINEAGE_FILE)
    except OSError:
        with contextlib.suppress(OSError):
            written.unlink(missing_ok=True)
        return False
    return True


def _keep_history_only(run: Path, version: str) -> None:
    """A registered run keeps its history (results.csv, plots, arguments, lineage), not its
    weights: best.pt is the version's copy in the model store, the same bytes held twice, and
    last.pt, its last epoch's, resumes nothing. last.pt told `--resume` the run had finished
    (`_interrupted`): the lineage notes the version it became instead, written before the
    weights go, so that a failed write leaves the run as it was."""
    if not _add_to_lineage(run, registered=version):
        return
    with contextlib.suppress(OSError):
        for name in ("best.pt", "last.pt"):
            (run / "weights" / name).unlink(missing_ok=True)
        (run / "weights").rmdir()  # (left where other checkpoints are in it: save_period's)


def _latest_run(
    runs_dir: Path,
    prefixes: list[str],
    name: str | None = None,
    teacher: str | None = None,
    teacher_id: int | None = None,
) -> Path:
    """The newest interrupted run of this dataset and one of these architectures (or the run
    named `name`) with this teacher (None: trained alone), by its name or, as a run started
    before its lineage named it recorded it, its id (`teacher_id`).

    Runs are named PREFIX-YYYYMMDD-HHMMSS (ultralytics adds -N to a name taken): a
    pattern of PREFIX-* also took defect-yolo-n-plain's runs for defect-yolo-n's. A `name` is
    the folder's whole name (a stop's hint names NAME-2 where ultralytics made one): NAME and
    any digits took a newer run12 for run1. And a distillation resumed by `train detector
    --resume` went on without its teacher on record, a plain run resumed by `distill detector
    --resume` was recorded as distilled."""
    any_prefix = "|".join(re.escape(prefix) for prefix in prefixes)
    # (ultralytics numbers a taken name NAME-2, once NAME2: a run started in the same second as
    # another was left out of `--resume` alone.)
    stamp = r"-\d{8}-\d{6}(?:-?\d+)?"
    own = re.compile(re.escape(name) if name else f"(?:{any_prefix})" + stamp)
    newest_first = sorted(
        (
            p
            for p in runs_dir.glob("*")
            if own.fullmatch(p.name) and ((p / "weights" / "last.pt").is_file() or _registered(p))
        ),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    # (Each checkpoint is loaded to learn whether it finished: newest first, until one does.)
    of_others: Path | None = None  # the newest interrupted run with another teacher
    for run in newest_first:
        lineage = _lineage(run)
        if lineage is not None and lineage.get("registered"):
            continue  # (finished: its weights are the version's, `_keep_history_only`)
        same_teacher = (  # (None: from before)
            lineage is None
            or lineage["teacher"] == teacher
            or (teacher_id is not None and lineage["teacher"] == str(teacher_id))
        )
        if not (same_teacher or of_others is None):
            continue
        if _interrupted(run / "weights" / "last.pt"):
            if same_teacher:
                return run
            of_others = run
    if of_others is not None:
        lineage = _lineage(of_others) or {}
        # (No --method: a resumed run goes on with its own loss, and the option given beside
        # --resume was warned about as ignored.)
        how = (
            f"`defects distill detector --teacher {lineage['teacher']} ... --resume`"
            if lineage.get("teacher")
            else "`defects train detector ... --resume`"
        )
        raise UserError(
            f"the interrupted run {of_others.name} "
            + (f"learns from {lineage['teacher']}" if lineage.get("teacher") else "has no teacher")
            + f": resume it with {how}"
        )
    raise UserError(
        f"no interrupted training of {name or ' or '.join(prefixes)} to resume in {runs_dir}"
        + (f" (the latest, {newest_first[0].name}, finished)" if newest_first else "")
    )


def _resumable(
    runs_dir: Path,
    prefixes: list[str],
    request: TrainRequest,
    class_names: list[str],
    teacher_id: int | None = None,
) -> tuple[Any, dict[str, Any], Path]:
    """The interrupted run's last checkpoint, loaded, its lineage and its folder; refused where the
    dataset was imported again with other classes since (the run was registered under the new
    names, though its first epochs learned other indices)."""
    run_dir = _latest_run(runs_dir, prefixes, request.name, request.teacher, teacher_id)
    lineage = _lineage(run_dir) or {}
    trained_on = lineage.get("data")  # (None: a run from before the dataset was kept)
    if trained_on is not None and trained_on != request.data:
        # (`--name` finds a run of any dataset: its next epochs went on with this dataset's
        # images, and it was registered as trained on it.)
        raise UserError(
            f"the interrupted run {run_dir.name} trains on {trained_on!r}, not {request.data!r}: "
            f"resume it with --data {trained_on}, or train on {request.data!r} without --resume"
        )
    model = load_detector(run_dir / "weights" / "last.pt")
    known = [model.names[i] for i in sorted(model.names)]
    if known != class_names:
        raise UserError(
            f"the interrupted run {run_dir.name} knows {known}, {request.data!r} labels "
            f"{class_names}: resuming keeps the classes; train from scratch instead"
        )
    return model, lineage, run_dir


def _resume_hint(request: TrainRequest, architecture: str, model: Any) -> str:
    """What to run to go on with a stopped training (one line), or why there is nothing to."""
    trainer = getattr(model, "trainer", None)
    if trainer is None or not (Path(trainer.save_dir) / "weights" / "last.pt").is_file():
        return "stopped before its first checkpoint: there is nothing to resume"
    if request.teacher:  # (`distill detector` takes the newest interrupted run of its teacher)
        # (Without --method, which the resumed run takes from its start: given, it was
        # warned about as ignored, in the very command this line said to run.)
        command = (
            f"defects distill detector --teacher {request.teacher} --student {architecture} "
            f"--data {request.data} --resume"
        )
    else:
        command = (
            f"defects train detector --data {request.data} --resume "
            f"--name {Path(trainer.save_dir).name}"
        )
    return f"stopped; resume with `{command}`"


def _new_run_folder(folders: list[Path]) -> dict[str, Callable[[Any], None]]:
    """Notes in `folders` the new run's folder as ultralytics makes it: a run that fails while
    its trainer is set up (reading the dataset) has no `model.trainer` to name it."""

    def on_pretrain_routine_start(trainer) -> None:  # type: ignore[no-untyped-def]
        folders[:] = [Path(trainer.save_dir)]

    return {"on_pretrain_routine_start": on_pretrain_routine_start}


def _remove_run_without_checkpoint(folders: list[Path], model: Any) -> Path | None:
    """Removes a new run's folder stopped or failed before its first checkpoint (its arguments,
    lineage and an empty weights/): nothing resumes it, and kept, the same `--name` next made
    NAME-2, named in the next stop's resume hint. The folder removed, if one was.

    `folders` as `_new_run_folder` noted it, else the trainer's (on several GPUs the trainer
    that makes the folder runs no such callback)."""
    trainer = getattr(model, "trainer", None)
    if folders:
        run = folders[0]
    elif trainer is not None:
        run = Path(trainer.save_dir)
    else:
        return None
    if not run.is_dir() or any((run / "weights").glob("*.pt")):
        return None
    shutil.rmtree(run, ignore_errors=True)
    return None if run.exists() else run


def _interrupted(last: Path) -> bool:
    """Whether a run's last checkpoint can be resumed: ultralytics marks a finished run's
    (epoch -1, no optimizer). Resumed anyway, ultralytics fell back to its own example
    dataset and tried to download it."""
    try:
        checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        # (ultralytics writes it over the last epoch's in place: a disk that filled as it wrote
        # left a file cut short, and the resume stopped in a traceback.)
        raise UserError(
            f"the interrupted run {last.parent.parent.name} cannot be resumed: its last "
            f"checkpoint {last} cannot be read ({first_sentence(exc) or type(exc).__name__}): cut short, as a full "
            "disk leaves it, or damaged; train again without --resume (and delete the run's "
            "folder to free its space)"
        ) from exc
    return checkpoint.get("epoch", -1) >= 0 and checkpoint.get("optimizer") is not None


def _run_folder_full(
    exc: BaseException, model: Any, runs_dir: Path, removed: bool = False
) -> UserError | None:
    """A failed write under the run's folder (a full disk, a folder not writable, a disk
    failing its writes) said in one line with the folder, what was kept (`removed`: the
    folder, with no checkpoint yet, is gone) and what to do: ultralytics writes each epoch's
    checkpoint there with no word of where, and the training stopped with the system's bare
    "[Errno 28] No space left on device" or "[Errno 5] Input/output error". None for any
    other error."""
    trainer = getattr(model, "trainer", None)
    folder = Path(trainer.save_dir) if trainer is not None else runs_dir
    if not isinstance(exc, OSError) or not failed_write(exc, runs_dir):
        return None
    where = f"{exc.filename} in " if exc.filename else ""
    kept = (
        "the folder, with no checkpoint yet, is removed"
        if removed
        else "the folder is kept, its last checkpoint perhaps cut short (its --resume is then "
        "refused)"
    )
    return UserError(
        f"cannot write {where}the training run's folder {folder}: {exc.strerror or exc}; "
        f"nothing is registered and the training job is marked failed; {kept}: "
        f"{write_fix(exc)} and train again"
    )


def _use_every_cpu_core(trainer) -> None:  # type: ignore[no-untyped-def]
    """ultralytics leaves one core free on the CPU for data loading, yet loads data in the training
    process there (workers=0): on a 2-core station that halves the speed of every step. Every
    core this process may use, not every core of the machine: under `taskset` or a container's
    cores, one thread a machine's core oversubscribed the few it was given."""
    if trainer.device.type == "cpu":
        torch.set_num_threads(len(usable_cores()))


def _add_callbacks(model, *groups: dict[str, Callable[[Any], None]] | None) -> None:  # type: ignore[no-untyped-def]
    for group in groups:
        for event, callback in (group or {}).items():
            model.add_callback(event, callback)


def train_detector(
    request: TrainRequest,
    url: str | None = None,
    callbacks: dict[str, Callable[[Any], None]] | None = None,
) -> int:
    """Train, register the best weights as a candidate; returns the model version id."""
    settings = get_settings()
    allow_pixels_up_to(max_pixels())  # (ultralytics checks each image with Pillow, here)
    url = url or settings.resolved_database_url
    runs_dir = (settings.runs_dir / "detect").resolve()
    check_runs_folder(runs_dir)
    if request.name is not None:  # (its folder under runs/: "../x" trained outside it)
        check_folder_name(request.name, "training run")
    if request.architecture is not None:
        # (Refused when the model was built, after the job was recorded: a failed job stood
        # for a typo; with --resume, "no interrupted training of DATA-TYPO" was said.)
        check_architecture(request.architecture)
    # (A resume goes on on the device its run was started on: --device is ignored there.)
    device = None if request.resume else _device_argument(request.device)
    with session_scope(url) as session:
        dataset, data_path = dataset_yaml(session, request.data)
        check_trainable(dataset)
        check_split_images(data_path.parent, request.data)
        tile = dataset_tile(data_path.parent)
        imgsz = training_size(request.imgsz, tile)
        class_names = list(dataset.classes)
        base_name = None
        if request.from_model:
            base = get_model_version(session, request.from_model)
            if base.kind != ModelKind.DETECTOR:
                raise UserError(f"{base.name} is a {base.kind.value}, not a detector")
            if request.architecture not in (None, base.architecture):
                # (It was dropped without a word: the base's own architecture was trained.)
                option = "--student" if request.teacher else "--model"
                raise UserError(
                    f"--from {base.name} fine-tunes its own architecture, {base.architecture}: "
                    f"leave {option} out, or train {request.architecture} from scratch"
                )
            # (ultralytics carried the old class heads over under the new names.)
            refuse_other_classes(base, request.data, class_names, "fine-tuning")
            base_weights = weights_file(base)
            architecture = base.architecture
            base_name = base.name
            # (A resume goes on from its own checkpoint: the base's file is not read.)
            base_model = None if request.resume else load_base(base.name, base_weights)
        else:
            base_weights, base_model = None, None
            architecture = request.architecture or DEFAULT_ARCHITECTURE
        teacher_id, teacher_weights = None, None
        if request.teacher:
            teacher = get_model_version(session, request.teacher)
            if teacher.kind != ModelKind.DETECTOR:
                raise UserError(f"{teacher.name} is a {teacher.kind.value}, not a detector")
            # A teacher that lacks the dataset's new classes still teaches: both losses match
            # neck features (ultralytics' weighted by the teacher's scores of its own classes,
            # CWD not at all), and none matches the student's class scores to the teacher's.
            refuse_other_classes(teacher, request.data, class_names, "distilling")
            teacher_id, teacher_weights = teacher.id, str(weights_file(teacher).resolve())
            check_teacher_loads(teacher.name, Path(teacher_weights))
            # By its name from here on, as given by id or by name: the Models page gives the
            # id, and its run's lineage said "learns from 1", so `--teacher NAME --resume`
            # was refused (and the stop's hint and the job named the teacher "1").
            request = replace(request, teacher=teacher.name)
        # Looked up before the job is recorded: a refused resume, as a refused --from, leaves
        # no job behind.
        resumed, lineage, resumed_dir = None, {}, runs_dir
        if request.resume:
            # (Without --model or --from, any architecture's run: `--resume` alone looked for
            # the default's, and said an interrupted n-scale run was not there.)
            resumed_architectures = (
                [architecture]
                if request.architecture or request.from_model
                else sorted(architectures(), key=lambda a: a != architecture)
            )
            resumed, lineage, resumed_dir = _resumable(
                runs_dir,
                [f"{request.data}-{a}" for a in resumed_architectures],
                request,
                class_names,
                teacher_id,
            )
            architecture = architecture_of(resumed) or architecture
            if lineage:
                # The base the run started from, as recorded: `--from` beside `--resume` picks
                # the scale alone (the run goes on from its own checkpoint), and a student
                # trained from scratch was registered "fine-tuned from" the version it named.
                base_name = lineage.get("from")
            if request.teacher and lineage.get("method"):
                # The run goes on with the loss it was started with: `--resume` without
                # `--method` (so "feature") went on with ultralytics' loss on a cwd run, its
                # projectors dropped, and registered the student as distilled with feature.
                request = replace(request, distill_method=lineage["method"])
        job = TrainingJob(
            kind="distill-detector" if request.teacher else "train-detector",
            status=JobStatus.RUNNING,
            params={
                **request.__dict__,
                "extra": dict(request.extra),
                # The job that ran the run before (None: a new run, or one from before jobs
                # were noted in its lineage): the job list says the stopped one was resumed.
                **({"resumes_job": lineage.get("job")} if resumed is not None else {}),
            },
            dataset_id=dataset.id,
            started_at=utcnow(),
            pid=os.getpid(),
            host=this_host(),
            process_start=process_start(os.getpid()),
        )
        session.add(job)
        session.flush()
        job_id, dataset_id = job.id, dataset.id
    if resumed is not None:
        _note_job(resumed_dir, job_id)

    prefix = f"{request.data}-{architecture}"
    events = {
        **_job_progress_callbacks(url, job_id),
        "on_pretrain_routine_end": _use_every_cpu_core,
        "on_pretrain_routine_start": _lineage_callback(
            request.teacher,
            request.distill_method if request.teacher else None,
            base_name,
            request.data,
            job_id,
        ),
    }
    cut: list[tuple[int, int]] = []  # the first epoch's batches trained, of all, if cut
    new_run: list[Path] = []  # a new run's folder, once made
    model = resumed
    try:
        if resumed is not None:
            _add_callbacks(model, events, _first_epoch_cut_short(cut), callbacks)
            # Where the run, its dataset and its teacher are on this machine now: the checkpoint
            # names the folders it had when it started, gone where the data folder moved since.
            here = {"data": str(data_path), "save_dir": str(resumed_dir)}
            if teacher_weights:
                here["distill_model"] = teacher_weights
            model.train(resume=True, **here, **_distill_trainer(request))
        else:
            if base_model is not None:
                model = base_model
                extend_classes(model, class_names)  # (a dataset that adds classes)
            else:
                model = build_detector(architecture, class_names)
            _add_callbacks(
                model, _new_run_folder(new_run), events, _first_epoch_cut_short(cut), callbacks
            )
            run_name = request.name or f"{prefix}-{datetime.now():%Y%m%d-%H%M%S}"
            model.train(
                data=str(data_path),
                epochs=request.epochs,
                imgsz=imgsz,
                batch=request.batch,
                device=device,
                workers=request.workers,
                patience=request.patience,
                seed=request.seed,
                deterministic=False,
                project=str(runs_dir),
                name=run_name,
                exist_ok=False,
                plots=request.plots,
                pretrained=bool(base_weights),
                # The base's class rows are carried by index (the dataset begins with its
                # classes, `refuse_other_classes`; `extend_classes` grows the head): ultralytics'
                # remapping by lower-cased name gave 'scratch' the rows of 'Scratch'.
                cls_remap=False,
                **({"time": request.hours} if request.hours else {}),
                **{
                    "close_mosaic": min(10, max(request.epochs // 5, 0)),
                    **(_distill_arguments(request, teacher_weights) if teacher_weights else {}),
                    **_distill_trainer(request),
                    **SURFACE_AUGMENTATION,
                    **dict(request.extra),
                },
            )
        trainer = model.trainer
        best = Path(trainer.best)
        if not best.is_file():
            raise UserError(f"training ended without weights ({best})")
        record_tile(best, tile)  # (before it is hashed and copied into the registry)
        short = ""
        if cut:
            trained_batches, batches = cut[0]
            short = (
                f"the time budget (--hours {request.hours}) ended the first epoch after "
                f"{trained_batches} of its {batches} batches: the model has barely begun to "
                "learn; give --hours more than one epoch's time"
            )
            print(f"warning: {short}", file=sys.stderr)
        metrics = {
            "val_map50": float(trainer.metrics.get("metrics/mAP50(B)", 0.0)),
            "val_map50_95": float(trainer.metrics.get("metrics/mAP50-95(B)", 0.0)),
            "epochs": int(trainer.epoch + 1),
            "imgsz": int(trainer.args.imgsz),
            "device": str(trainer.device),  # as resolved: "auto" says nothing about where it ran
            "run_dir": str(Path(trainer.save_dir)),
            **({"tile": tile.to_json()} if tile is not None else {}),
        }
        with registration_scope(url) as session:
            from db.models import Dataset, ModelVersion

            dataset = session.get(Dataset, dataset_id)
            teacher_row = session.get(ModelVersion, teacher_id) if teacher_id else None
            version = register_model_version(
                session,
                best,
                settings.models_dir,
                kind=ModelKind.DETECTOR,
                architecture=architecture_of(load_detector(best)) or architecture,
                class_names=class_names,
                image_size=int(trainer.args.imgsz),
                metrics=metrics,
                dataset=dataset,
                teacher=teacher_row,
                notes="; ".join(
                    note
                    for note in (
                        f"fine-tuned from {base_name}" if base_name else "",
                        # (The teacher is recorded; the loss it taught with was only in the job.)
                        f"distilled with {request.distill_method}" if teacher_row else "",
                    )
                    if note
                ),
            )
            job = session.get(TrainingJob, job_id)
            assert job is not None
            job.status = JobStatus.SUCCEEDED
            job.error = None  # (a look from elsewhere may have called it ended)
            job.progress = 1.0
            if short:
                job.log = (job.log or "") + short + "\n"
            job.finished_at = utcnow()
            job.result_model_version_id = version.id
            version_id, version_name = version.id, version.name
        _keep_history_only(Path(trainer.save_dir), version_name)  # (once the version is committed)
        return version_id
    except BaseException as exc:
        # (A failed run's folder was kept as a stopped one's was not: the same --name next
        # made NAME-2.)
        removed = _remove_run_without_checkpoint(new_run, model) if resumed is None else None
        full = _run_folder_full(exc, model, runs_dir, removed is not None)
        record_job_end(url, job_id, full or exc)
        if isinstance(exc, KeyboardInterrupt):  # (SIGTERM too: the CLI raises it for one)
            hint = _resume_hint(request, architecture, model)
            if removed is not None:
                hint += f" (its run folder {removed.name} is removed)"
            print(hint, file=sys.stderr)
            raise Stopped from exc  # (said: the command line adds no "interrupted")
        if full is not None:
            raise full from exc
        raise
