"""Training started from the app runs as its own process, so it survives the page being closed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from db.models import JobStatus, TrainingJob, utcnow
from db.session import session_scope
from inspection.errors import UserError
from inspection.settings import get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
RECENT_JOBS = 10  # the training jobs the Models page and `defects models list` show, newest first


def check_runs_folder(folder: Path) -> None:
    """Refuses in one line, before a job is recorded, a runs folder that a file stands in the
    way of (`runs/classify` a file): the training stopped on the system's bare "[Errno 17] File
    exists" or "[Errno 20] Not a directory", after its job was recorded as failed."""
    for path in (folder, *folder.parents):
        if path.is_dir():
            return
        if path.exists() or path.is_symlink():
            raise UserError(
                f"{path} is a file, not a folder: training runs are written under {folder}; "
                "move that file away and train again"
            )


def detector_training_command(
    data: str,
    epochs: int,
    imgsz: int | None,
    from_model: str | None = None,
    architecture: str = "defect-yolo-s",
    teacher: str | None = None,
    hours: float | None = None,
) -> list[str]:
    """The `defects train detector` (or `distill detector`, with a teacher) a page starts."""
    command = [sys.executable, "-c", "from training.cli import main; main()"]
    if teacher:
        command += ["distill", "detector", "--teacher", teacher, "--student", architecture]
    else:
        command += ["train", "detector", "--model", architecture]
    command += ["--data", data, "--epochs", str(epochs)]
    if imgsz is not None:  # (None: the command's own default, a tiled dataset's tile size)
        command += ["--imgsz", str(imgsz)]
    if from_model:
        command += ["--from", from_model]
    if hours:
        command += ["--hours", str(hours)]
    return command


def start_detector_training(
    data: str,
    epochs: int,
    imgsz: int | None,
    from_model: str | None = None,
    architecture: str = "defect-yolo-s",
    log_dir: Path | None = None,
    teacher: str | None = None,
    hours: float | None = None,
) -> tuple[int, Path]:
    """Launch `detector_training_command` detached; returns its pid and log file. With
    `hours`, training ends within that time whatever `epochs` says."""
    log_dir = log_dir or get_settings().runs_dir / "jobs"
    log_dir.mkdir(parents=True, exist_ok=True)
    command = detector_training_command(
        data, epochs, imgsz, from_model, architecture, teacher, hours
    )
    log_file = log_dir / f"train-{data}-{os.getpid()}-{len(list(log_dir.iterdir()))}.log"
    with log_file.open("w") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # not a child of the app's session: closing the page leaves it running
        )
    return process.pid, log_file


def process_alive(pid: int | None) -> bool:
    """Whether a training's process still runs. One the app started and that ended stays a
    zombie until the app reaps it, which a bare signal check took for alive: a job killed
    outright showed as running for good."""
    if not pid:
        return False
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False  # the app's own child, ended (reaped now)
    except ChildProcessError:
        pass  # not the app's child: a `defects train` started elsewhere
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # (the state field follows the command's name in brackets, which may hold spaces)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def this_host() -> str:
    return socket.gethostname()


def process_start(pid: int | None) -> str | None:
    """A process by the boot it runs in and its start in clock ticks since that boot
    ("BOOT_ID:TICKS"), on Linux; None where /proc cannot say (another system, a process gone).
    Unlike a start time by the wall clock, no step of the clock (NTP, an operator setting it)
    moves it, and a later process given the same pid has another."""
    if not pid:
        return None
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        # (Field 22, starttime; the fields after the command's name, which may hold spaces.)
        ticks = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{boot}:{ticks}"


# A job's row is written by its process once it has loaded its data and model: a process that
# began after the row did cannot be the job's own.
_START_SLACK_S = 5.0


def job_alive(
    pid: int | None,
    host: str | None,
    recorded_at: datetime | None = None,
    started: str | None = None,
) -> bool | None:
    """Whether a job's process runs; None where it runs on another machine, which alone can
    tell (a job with no host is from before hosts were kept: taken for this machine's).
    `recorded_at` (the job row's UTC time) tells the job's process from a later one given
    the same pid: after a restart of the machine a killed job showed as running for good."""
    if host is not None and host != this_host():
        return None
    if not process_alive(pid):
        return False
    # `started` (the job's `process_start`) tells the job's process from a later one by its
    # boot and ticks; the times below, where it was not recorded, by the wall clock.
    now = process_start(pid) if started is not None else None
    if now is not None:
        return now == started
    if recorded_at is None or pid is None:
        return True
    try:
        began = datetime.fromtimestamp(psutil.Process(pid).create_time(), UTC).replace(tzinfo=None)
    except psutil.Error:
        return True  # (not ours to read: taken for alive, as process_alive does)
    return (began - recorded_at).total_seconds() <= _START_SLACK_S


def mark_ended(url: str, job_id: int) -> None:
    """A job whose process is gone without recording its end (killed outright): failed."""
    with session_scope(url) as session:
        job = session.get(TrainingJob, job_id)
        if job is not None and job.status == JobStatus.RUNNING:
            _mark_ended(job)


def _mark_ended(job: TrainingJob) -> None:
    job.status = JobStatus.FAILED
    job.error = "its process ended without finishing (killed, or the machine stopped)"
    job.finished_at = utcnow()


def recent_jobs(url: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The newest training jobs (of `kind`, a model kind: "detector" or "classifier") as
    `defects models list` shows them, newest first: a running job whose process is gone is
    marked failed first, as the Models page does."""
    from sqlalchemy import select

    query = select(TrainingJob).order_by(TrainingJob.created_at.desc(), TrainingJob.id.desc())
    if kind is not None:
        query = query.where(TrainingJob.kind.endswith(f"-{kind}"))
    with session_scope(url) as session:
        jobs = session.scalars(query.limit(RECENT_JOBS)).all()
        for job in jobs:
            running = job.status == JobStatus.RUNNING
            if running and job_alive(job.pid, job.host, job.created_at, job.process_start) is False:
                _mark_ended(job)
        resumed_as = _resumed_as(session, min((job.id for job in jobs), default=0))
        return [
            {
                "id": job.id,
                "kind": job.kind,
                "status": job.status.value,
                "progress": job.progress,
                "dataset": (job.params or {}).get("data"),
                "model_version": (
                    job.result_model_version.name if job.result_model_version else None
                ),
                "error": job.error,
                # (A stopped run resumed makes a new job: the stopped one stayed "cancelled"
                # with no word of the job that went on with its run.)
                "resumes": (job.params or {}).get("resumes_job"),
                "resumed_as": resumed_as.get(job.id),
                "host": job.host,
                "pid": job.pid,
                "created_at": _utc(job.created_at),
                "finished_at": _utc(job.finished_at),
            }
            for job in jobs
        ]


def _resumed_as(session: Session, oldest: int) -> dict[int, int]:
    """The job that resumed each job's run, by the resumed job's id, among the jobs from
    `oldest` on (a resume is newer than the job it resumes); the latest where two name one."""
    from sqlalchemy import select

    later = session.execute(
        select(TrainingJob.id, TrainingJob.params)
        .where(TrainingJob.id > oldest)
        .order_by(TrainingJob.id)
    )
    return {
        params["resumes_job"]: job_id
        for job_id, params in later
        if isinstance((params or {}).get("resumes_job"), int)
    }


def _utc(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") + "Z" if moment is not None else None


def log_tail(log: Path, lines: int = 8) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def record_job_end(url: str, job_id: int, error: BaseException) -> None:
    """Mark a training job cancelled (Ctrl-C) or failed, with the reason, before re-raising.
    A job already recorded succeeded with its version is left so: stopped or failed after its
    registration was committed, it was said failed while its version was there to be used."""
    with session_scope(url) as session:
        job = session.get(TrainingJob, job_id)
        registered = job is not None and job.result_model_version_id is not None
        if job is not None and not (job.status == JobStatus.SUCCEEDED and registered):
            stopped = isinstance(error, KeyboardInterrupt)
            job.status = JobStatus.CANCELLED if stopped else JobStatus.FAILED
            job.error = (
                "stopped (Ctrl-C or SIGTERM)" if stopped else f"{error.__class__.__name__}: {error}"
            )
            job.finished_at = utcnow()
