"""The `defects` command line.

It lives in `training` because that is the one package allowed to import both `inspection` and
`db`, which every sub-command needs.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import DBAPIError

import inspection  # noqa: F401 - prepares torch/torchvision/ultralytics before anything else
from db.migrate import current_revision, head_revision, upgrade
from db.models import ModelKind, ModelStage, ModelVersion, Role
from db.registry import (
    UNNAMED_LINE,
    NotFoundError,
    classifier_in_use,
    get_model_version,
    named_version,
    promote_version,
    roll_back,
)
from db.session import DatabaseError, redact, session_scope
from inspection.errors import Stopped, StorageError, UserError
from inspection.runtime import end_process
from inspection.settings import get_settings

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sqlalchemy.orm import Session

    from db.queries import PartCounts, StationActivity
    from inspection.engine import TileChoice
    from training.datasets import ImportReport

app = typer.Typer(
    help="Surface-defect inspection: import data, train, evaluate, export, inspect, track.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="The inspection database.", no_args_is_help=True)
models_app = typer.Typer(
    help="Model versions: list, promote, roll back, archive; install the demo model. Training jobs: jobs.",
    no_args_is_help=True,
)
train_app = typer.Typer(help="Train models on an imported dataset.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.add_typer(train_app, name="train")
distill_app = typer.Typer(
    help="Distill a large teacher into a small, fast student.", no_args_is_help=True
)
app.add_typer(distill_app, name="distill")
users_app = typer.Typer(
    help="Dashboard accounts: once one exists, the dashboard asks everyone to log in.",
    no_args_is_help=True,
)
app.add_typer(users_app, name="users")
# Lines are never wrapped at the 80 columns rich assumes off a terminal: a part's line split in
# two in a log, or for a script reading it line by line. Neither markup nor emoji codes are
# read: what is printed holds names a camera or a person chose (files, lines, stations,
# classes, datasets), and "[red]" in one vanished, "[/]" stopped the command with rich's
# MarkupError, ":thumbs_up:" printed as an emoji. Colour is given by `style=` instead.
console = Console(soft_wrap=True, markup=False, emoji=False)


def database_url() -> str:
    return get_settings().resolved_database_url


def migrated_database_url() -> str:
    """The database URL, after bringing its schema up to date (every command migrates on start)."""
    url = database_url()
    upgrade(url, outage_s=get_settings().db_outage_seconds)
    return url


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to the latest revision."""
    url = database_url()
    revision = upgrade(url, outage_s=get_settings().db_outage_seconds)
    console.print(f"database {redact(url)} at revision {revision}")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision of the database and the latest one."""
    url = database_url()
    console.print(f"database {redact(url)}: {current_revision(url)} (latest {head_revision()})")


@models_app.command("list")
def models_list(
    kind: Annotated[ModelKind | None, typer.Option(help="Only this kind.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Model versions, newest first, with their stage and key metrics; the latest training jobs."""
    import json

    from sqlalchemy import select

    from training.jobs import recent_jobs

    url = migrated_database_url()
    # (Jobs were shown on the Models page alone: a training running, failed or stopped from a
    # shell or a service was not to be seen without the dashboard.)
    jobs = recent_jobs(url, kind.value if kind is not None else None)
    with session_scope(url) as session:
        query = select(ModelVersion).order_by(ModelVersion.created_at.desc())
        if kind is not None:
            query = query.where(ModelVersion.kind == kind)
        versions = session.scalars(query).all()
        if as_json:  # (empty lists too: a script reads no sentence)
            rows = [
                {
                    "id": v.id,
                    "name": v.name,
                    "kind": v.kind.value,
                    "architecture": v.architecture,
                    "stage": v.stage.value,
                    "map50": (v.metrics or {}).get("map50"),
                    "val_map50": (v.metrics or {}).get("val_map50"),
                    "miss_rate": (v.metrics or {}).get("miss_rate"),
                    "false_call_rate": (v.metrics or {}).get("false_call_rate"),
                    # (A distilled student's teacher was recorded but shown nowhere outside
                    # the dashboard: a script could not tell a distilled version from another.)
                    "teacher": v.teacher.name if v.teacher else None,
                    "dataset": v.dataset.name if v.dataset else None,
                    "notes": v.notes or "",
                    "created_at": v.created_at.isoformat(timespec="seconds") + "Z",
                }
                for v in versions
            ]
            # (A list, as from the first release: scripts read it so. The jobs are in
            # `models jobs --json`.)
            print(json.dumps(rows, indent=2))
            return
        if not versions:
            # (Said of the kind asked for: `--kind classifier` beside a production detector
            # read "no model versions yet", as if the database held none.)
            if kind is None or kind == ModelKind.DETECTOR:
                what = "model" if kind is None else "detector"
                how = "`defects train detector`, or `defects models install-demo`"
            else:
                what, how = kind.value, f"`defects train {kind.value}`"
            console.print(
                f"no {what} versions yet in {redact(url)}: train one with {how}", markup=False
            )
        else:
            # (Test figures come from `evaluate`; until then only training's val mAP50 is
            # known, and the list showed "-" after a training that had just printed it.)
            headers = (
                "id",
                "name",
                "kind",
                "architecture",
                "stage",
                "mAP50",
                "val mAP50",
                "miss rate",
                "created (UTC)",  # (stored in UTC; a station on local time read it as its own)
            )
            rows_shown = [
                (
                    str(v.id),
                    v.name,
                    v.kind.value,
                    v.architecture,
                    v.stage.value,
                    _fmt((v.metrics or {}).get("map50")),
                    _fmt((v.metrics or {}).get("val_map50")),
                    _fmt((v.metrics or {}).get("miss_rate")),
                    v.created_at.strftime("%Y-%m-%d %H:%M"),
                )
                for v in versions
            ]
            _print_unbroken(Table(*headers), rows_shown, whole=(1, 3))
            _say_lineages(versions)
        _say_unnamed_folders(session)
    if jobs:  # (a first training, running, has no version yet: its job is shown all the same)
        _print_jobs(jobs)


def _say_lineages(versions: Sequence[ModelVersion]) -> None:
    """A line for each version made from others (its base, its teacher), under the table: shown
    only by `--json` and the Models page, and a column would widen a table that already keeps
    its names whole past 80 columns."""
    from training.versions import lineage

    for version in versions:
        if made_from := lineage(version):
            console.print(f"{version.name}: {made_from}", markup=False)


def _say_unnamed_folders(session: Session) -> None:
    """Folders in the model store that no version names, with how to remove them: left by a
    registration killed before its commit, they held a copy of the weights, said nowhere."""
    from training.versions import UNNAMED_FOLDER_AGE, unnamed_version_folders

    models_dir = get_settings().models_dir
    left = unnamed_version_folders(session, models_dir)
    if not left:
        return
    hours = UNNAMED_FOLDER_AGE.total_seconds() / 3600
    many = len(left) > 1
    console.print(
        f"{len(left)} folder{'s' if many else ''} in {models_dir} that no model version names, "
        f"unchanged for over {hours:g} hour{'s' if hours != 1 else ''} (left by a registration "
        f"stopped before it was recorded): {', '.join(f.name for f in left)}; nothing uses "
        f"{'them' if many else 'it'}: remove {'them' if many else 'it'} with "
        f"`rm -r {' '.join(shlex.quote(str(f)) for f in left)}`",
        markup=False,
    )


@models_app.command("jobs")
def models_jobs(
    kind: Annotated[ModelKind | None, typer.Option(help="Only this kind.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The latest training jobs, newest first, as the Models page shows them."""
    import json

    from training.jobs import recent_jobs

    url = migrated_database_url()
    jobs = recent_jobs(url, kind.value if kind is not None else None)
    if as_json:  # (an empty list too: a script reads no sentence)
        print(json.dumps(jobs, indent=2))
    elif jobs:
        _print_jobs(jobs)
    else:
        console.print(f"no training jobs yet in {redact(url)}", markup=False)


def _print_jobs(jobs: list[dict[str, Any]]) -> None:
    job_headers = ("job", "kind", "status", "progress", "dataset", "result", "created (UTC)")
    job_rows = [
        (
            str(job["id"]),
            job["kind"],
            # (The reason's first line: ultralytics' errors run on over several.)
            job["status"]
            + (f": {job['error'].splitlines()[0]}" if job["error"] else "")
            + (f"; resumed as job {job['resumed_as']}" if job["resumed_as"] else "")
            + (f" (resumes job {job['resumes']})" if job["resumes"] else ""),
            f"{job['progress']:.0%}",
            job["dataset"] or "-",
            job["model_version"] or "-",
            job["created_at"].replace("T", " ")[:16],
        )
        for job in jobs
    ]
    _print_unbroken(Table(*job_headers, title="training jobs"), job_rows, whole=(1, 5))


def _print_unbroken(table: Table, rows: list[tuple[str, ...]], whole: tuple[int, ...]) -> None:
    """Print `table` with `rows`, breaking no word and the columns `whole` not at all.

    Short of room (80 columns, or any pipe), rich folded names mid-word ("defect-y/olo-n") and
    cut others short ("product…"), and a name is copied into `promote` and `--model`. Each
    column keeps at least its longest word (`whole` ones their longest cell, on one line); where
    even that is wider than the terminal the table is printed wider, not cropped."""
    from rich.measure import Measurement

    for index, column in enumerate(table.columns):
        cells = [column.header, *(row[index] for row in rows)]
        if index in whole:
            column.no_wrap = True
            column.min_width = max(len(str(cell)) for cell in cells[1:])
        else:
            column.min_width = max(len(word) for cell in cells for word in str(cell).split())
    for row in rows:
        table.add_row(*row)
    # (A table given a width expands to it: set only where the terminal is too narrow.)
    needed = Measurement.get(console, console.options.update_width(10**6), table).minimum
    if needed > console.width:
        table.width = needed
    console.print(table, crop=False)


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


@models_app.command("promote")
def models_promote(model: Annotated[str, typer.Argument(help="Model version id or name.")]) -> None:
    """Make a model version the production model of its kind (the current one is archived)."""
    url = migrated_database_url()
    promoted = promote_version(url, model)
    if promoted.already:
        console.print(f"{promoted.name} is already the production {promoted.kind.value}")
        return
    replaced = f", replacing {promoted.replaced}" if promoted.replaced else ""
    console.print(f"{promoted.name} is now the production {promoted.kind.value}{replaced}")
    from training.versions import promotion_warnings

    for warning in promotion_warnings(url, promoted.name, promoted.replaced):
        console.print(f"warning: {warning}", markup=False)


@models_app.command("rollback")
def models_rollback(
    kind: Annotated[ModelKind, typer.Option(help="Which kind of model.")] = ModelKind.DETECTOR,
) -> None:
    """Put back the production model that the current one replaced."""
    console.print(
        f"{roll_back(migrated_database_url(), kind)} is the production {kind.value} again"
    )


@models_app.command("install-demo")
def models_install_demo() -> None:
    """Register the shipped demo model and put it in production.

    It becomes production where there is none, or in place of an earlier demo still at its
    shipped thresholds, never of a model of your own.
    """
    from training.demo import install_demo

    with session_scope(migrated_database_url()) as session:
        result = install_demo(session, get_settings().models_dir)
    console.print(result.message)


@models_app.command("archive")
def models_archive(model: Annotated[str, typer.Argument(help="Model version id or name.")]) -> None:
    """Retire a model version."""
    from db.models import database_utcnow

    with session_scope(migrated_database_url()) as session:
        version = get_model_version(session, model)
        if version.stage == ModelStage.ARCHIVED:
            # Stamped again, it would become the version a rollback puts back.
            console.print(f"{version.name} is archived already")
            return
        if version.stage == ModelStage.PRODUCTION:
            raise UserError(
                f"{version.name} is in production: promote another version or roll back first "
                "(archived, it would leave the stations without a model)"
            )
        users = classifier_in_use(session, version) if version.kind == ModelKind.CLASSIFIER else []
        if users:
            raise UserError(
                f"{version.name} verifies the verdicts of {', '.join(users)}, named by their "
                "operating point: calibrate those without it first"
            )
        version.stage = ModelStage.ARCHIVED
        version.archived_at = database_utcnow(session)
        # Retired by hand, never put back by a rollback: a version once promoted and rolled
        # back from (a candidate again) would otherwise, stamped last, be the one it restores.
        version.promoted_at = None
        console.print(f"{version.name} archived")


PASSWORD_STDIN_HELP = "Read the password from the first line of stdin (for scripts), not a prompt."
PasswordStdinOption = Annotated[bool, typer.Option(help=PASSWORD_STDIN_HELP)]


def _warn_without_engineer(url: str) -> None:
    """Accounts with no engineer among those that can log in lock the dashboard's Models and
    Settings pages from everyone, which nothing on the floor then says."""
    from db.accounts import engineer_can_log_in

    with session_scope(url) as session:
        if engineer_can_log_in(session):
            return
    console.print(
        "warning: no engineer account can log in: the dashboard's Models and Settings pages "
        "and its export of reviews are open to nobody until one is added "
        "(`defects users add NAME --role engineer`) or enabled",
        markup=False,
    )


def _new_password(from_stdin: bool) -> str:
    """The password typed twice at a prompt (not echoed), or the first line of stdin."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="The account's name, as reviews will show it.")],
    role: Annotated[
        Role,
        typer.Option(
            help="reviewer: Inspect, Live, Review, History; engineer: also Models and Settings."
        ),
    ],
    password_stdin: PasswordStdinOption = False,
) -> None:
    """Add a dashboard account (the first one turns the dashboard's login on)."""
    from db.accounts import accounts_exist, add_user

    url = migrated_database_url()
    password = _new_password(password_stdin)
    with session_scope(url) as session:
        first = not accounts_exist(session)
        user = add_user(session, name, role, password)
        console.print(f"account {user.name} added ({user.role.value})")
    if first:
        console.print("the dashboard now asks everyone to log in")
    _warn_without_engineer(url)


@users_app.command("list")
def users_list() -> None:
    """The accounts, their roles and whether they are disabled."""
    from db.accounts import list_users

    with session_scope(migrated_database_url()) as session:
        users = list_users(session)
        if not users:
            console.print(
                "no accounts: the dashboard is open to anyone who reaches it "
                "(add one with `defects users add NAME --role engineer`)"
            )
            return
        table = Table("name", "role", "state", "created (UTC)")
        for user in users:
            state = f"disabled {user.disabled_at:%Y-%m-%d %H:%M}" if user.disabled_at else "active"
            table.add_row(user.name, user.role.value, state, f"{user.created_at:%Y-%m-%d %H:%M}")
        console.print(table)


@users_app.command("set-password")
def users_set_password(
    name: Annotated[str, typer.Argument(help="The account's name.")],
    password_stdin: PasswordStdinOption = False,
) -> None:
    """Give an account a new password (and end any wait after wrong tries)."""
    from db.accounts import get_user, set_password

    url = migrated_database_url()
    with session_scope(url) as session:
        get_user(session, name)  # (refused before the password is asked)
    password = _new_password(password_stdin)
    with session_scope(url) as session:
        user = set_password(session, name, password)
        console.print(f"password of {user.name} changed")


@users_app.command("disable")
def users_disable(name: Annotated[str, typer.Argument(help="The account's name.")]) -> None:
    """Stop an account from logging in; never deleted, since its reviews name it."""
    from db.accounts import disable_user

    url = migrated_database_url()
    with session_scope(url) as session:
        user = disable_user(session, name)
        console.print(f"account {user.name} disabled (its reviews keep its name)")
    _warn_without_engineer(url)


@users_app.command("enable")
def users_enable(name: Annotated[str, typer.Argument(help="The account's name.")]) -> None:
    """Let a disabled account log in again."""
    from db.accounts import enable_user

    with session_scope(migrated_database_url()) as session:
        user = enable_user(session, name)
        console.print(f"account {user.name} enabled ({user.role.value})")


class SourceFormatChoice(StrEnum):
    voc = "voc"
    yolo = "yolo"
    coco = "coco"
    deeppcb = "deeppcb"


@app.command("import")
def import_command(
    source_format: Annotated[SourceFormatChoice, typer.Argument(help="Annotation format.")],
    src: Annotated[
        Path,
        typer.Argument(
            help="Folder (or COCO .json file) of labeled images; deeppcb: the folder with "
            "trainval.txt and test.txt (or PCBData/ in it)."
        ),
    ],
    name: Annotated[str, typer.Option("--name", help="Name to register the dataset under.")],
    splits: Annotated[
        Path | None,
        typer.Option(
            "--splits",
            help="Folder with train.txt, val.txt, test.txt of file names (or of their "
            "stems, as VOC's ImageSets/Main).",
        ),
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Comma-separated class names, in index order.")
    ] = None,
    replace: Annotated[bool, typer.Option(help="Replace a dataset of the same name.")] = False,
    tile: Annotated[
        str | None,
        typer.Option(
            "--tile",
            metavar="SIZE[:OVERLAP]",
            help="Cut each image into square tiles of SIZE pixels (at its own resolution), "
            "neighbours overlapping by OVERLAP of a tile (a fraction or a percentage, default "
            "0.2), to train a tiled model, for parts much larger than the detector's input.",
        ),
    ] = None,
) -> None:
    """Import a labeled dataset (defect-free images included) into the product's layout."""
    from inspection.tiling import TileSpec, TileSpecError
    from training.datasets import import_dataset

    spec = None
    if tile is not None:
        try:
            spec = TileSpec.parse(tile)
        except TileSpecError as exc:
            raise UserError(f"--tile {tile}: {exc}") from exc
    class_list = [c.strip() for c in classes.split(",")] if classes else None
    with session_scope(migrated_database_url()) as session:
        report = import_dataset(
            session,
            source_format.value,
            src,
            name,
            get_settings().datasets_dir,
            splits_dir=splits,
            classes=class_list,
            replace=replace,
            tile=spec,
        )
    _print_dataset_report(report)


def _print_dataset_report(report: ImportReport) -> None:
    """Splits, warnings and left-out images of a dataset just written (import or export)."""
    if report.tile is not None:
        table = Table("split", "parts", "good parts", "tiles", "boxes in tiles")
        for split, counts in report.split_counts.items():
            table.add_row(
                split,
                str(counts["parts"]),
                str(counts["good"]),
                str(counts["images"]),
                str(counts["boxes"]),
            )
    else:
        table = Table("split", "images", "good parts", "boxes")
        for split, counts in report.split_counts.items():
            table.add_row(split, str(counts["images"]), str(counts["good"]), str(counts["boxes"]))
    console.print(f"dataset {report.name}: {len(report.classes)} classes {report.classes}")
    if report.cut_into is not None:
        console.print(report.cut_into, markup=False)
    console.print(table)
    if report.converted:
        console.print(f"{report.converted} image(s) of more than 8 bits stored as 8-bit PNG")
    n_good = sum(counts["good"] for counts in report.split_counts.values())
    if n_good and not report.split_counts["val"]["good"]:
        # (A split by hash can put none there: calibration on val then cannot count a false call.)
        console.print(
            f"warning: val holds none of the {n_good} good parts: calibrating on val cannot "
            "count false calls; give --splits with good parts in val",
            markup=False,
        )
    # (Warnings apart: two of them once printed as "2 image(s) left out" with none left out.)
    for heading, listed in (
        ("warning(s)", report.warnings),
        ("image(s) left out", report.left_out),
    ):
        if not listed:
            continue
        console.print(f"{len(listed)} {heading}:", style="yellow")
        for issue in listed[:20]:
            console.print(f"  {issue}", markup=False)
        if len(listed) > 20:
            console.print(f"  ... see {report.root / 'import_report.txt'}", markup=False)


@app.command("export-reviews")
def export_reviews_command(
    name: Annotated[str, typer.Option("--name", help="Name of the new dataset.")] = "reviews",
    tile: Annotated[
        str | None,
        typer.Option(
            "--tile",
            metavar="SIZE[:OVERLAP]|off",
            help="Cut the parts in SIZE[:OVERLAP] tiles, or off (whole); default: the "
            "production detector's grid. Give the stations' --tile where they judge in another.",
        ),
    ] = None,
) -> None:
    """Export the reviewed parts as a labeled dataset to retrain on.

    With the production detector's classes, as the Review page's export, followed by the new
    classes reviewers added: confirmed and added defects are boxes, parts marked good are good
    parts; parts not fully decided are left out.
    """
    from db.registry import production_model
    from inspection.engine import parse_tile
    from training.backtest import export_reviews

    grid = parse_tile(tile) if tile is not None else "model"
    with session_scope(migrated_database_url()) as session:
        detector = production_model(session, ModelKind.DETECTOR)
        if detector is None:
            raise UserError(
                "no production detector: the export takes its class list; promote one first"
            )
        report = export_reviews(
            session, name, list(detector.classes), get_settings().datasets_dir, tile=grid
        )
    _print_dataset_report(report)
    new_classes = report.classes[len(detector.classes) :]
    if new_classes:
        console.print(
            f"new classes, after {detector.name}'s own: {', '.join(new_classes)} "
            "(fine-tuning from it adds them to its output)",
            markup=False,
        )
    console.print(
        f"retrain on it: `defects train detector --data {report.name} --from {detector.name}`",
        markup=False,
    )


# One wording per option across the commands (the same option was described two ways).
DEVICE_HELP = "cpu, cuda or cuda:N; default: DEFECTS_DEVICE."
TRAIN_DEVICE_HELP = "cpu, cuda or cuda:N (or N); several GPUs: 0,1; default: DEFECTS_DEVICE."
EPOCHS_HELP = "Passes over the training images."
TRAIN_IMGSZ_HELP = "Training image size (pixels)."
DETECTOR_IMGSZ_HELP = (
    "Training image size (pixels; default: a tiled dataset's tile size, else 256)."
)
BATCH_HELP = "Images per training step."
CLASSIFIER_BATCH_HELP = "Images per training step, at least 2: batch norm learns nothing from one."
SEED_HELP = "Random seed, for a run that can be repeated."
DATA_HELP = "Imported dataset name."
VERSION_NAME_HELP = (
    "Name of the new model version, its folder: letters, digits, '-', '_', '.' "
    "(default: the architecture and the time)."
)

# The options several commands share, declared once: each command keeps its own default.
DataOption = Annotated[str, typer.Option(help=DATA_HELP)]
EpochsOption = Annotated[int, typer.Option(min=1, help=EPOCHS_HELP)]
SeedOption = Annotated[int, typer.Option(help=SEED_HELP)]
DeviceOption = Annotated[str | None, typer.Option(help=DEVICE_HELP)]
TrainDeviceOption = Annotated[str | None, typer.Option(help=TRAIN_DEVICE_HELP)]
DetectorImgszOption = Annotated[int | None, typer.Option(min=32, help=DETECTOR_IMGSZ_HELP)]
DetectorBatchOption = Annotated[int, typer.Option(min=1, help=BATCH_HELP)]
ClassifierImgszOption = Annotated[int, typer.Option(min=32, help=TRAIN_IMGSZ_HELP)]
ClassifierBatchOption = Annotated[int, typer.Option(min=2, help=CLASSIFIER_BATCH_HELP)]
VersionNameOption = Annotated[str | None, typer.Option(help=VERSION_NAME_HELP)]

# The detector `inspect` and `batch` judge with.
ModelOption = Annotated[
    str | None,
    typer.Option(
        help="Model version, or a file of one (its .pt or an exported .onnx); "
        "default: the production detector."
    ),
]


HoursOption = Annotated[
    float | None,
    typer.Option(
        min=0.001,
        help="Wall-time budget: the epochs are re-planned after the first to end within it "
        "(--epochs is then ignored).",
    ),
]


def _say_registered(version_id: int, details: Callable[[ModelVersion], str]) -> None:
    """The line "registered NAME (candidate)" and `details` of the version a training made,
    read back from the database: every training and distillation ends with this line."""
    with session_scope(database_url()) as session:
        version = get_model_version(session, version_id)
        console.print(f"registered {version.name} (candidate){details(version)}")


def _distilled_from(version: ModelVersion) -> str:
    """The teacher by its name, as recorded: `--teacher` may give its id (as the Models page
    does), and "distilled from 1" was said."""
    return f", distilled from {version.teacher.name}" if version.teacher else ""


def _warn_ignored_on_resume(ctx: typer.Context, resume: bool, names: tuple[str, ...]) -> None:
    """ultralytics goes on with the settings a run was started with: options given beside
    --resume were dropped without a word."""
    # (By the source's name: typer vendors its own click, whose enum is not click's.)
    sources = {name: ctx.get_parameter_source(name) for name in names}
    given = [
        f"--{name}"
        for name, source in sources.items()
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
    ]
    if resume and given:
        console.print(
            f"{', '.join(given)} ignored with --resume: the run goes on with the settings it "
            "was started with",
            style="yellow",
            markup=False,
        )


@train_app.command("detector")
def train_detector_command(
    ctx: typer.Context,
    data: DataOption,
    model: Annotated[
        str | None,
        typer.Option(
            help="Architecture: defect-yolo-{n,s,m}, -plain without attention, -gated with "
            "attention gates that start as the identity (default defect-yolo-s; with --from, "
            "that version's own)."
        ),
    ] = None,
    epochs: EpochsOption = 100,
    imgsz: DetectorImgszOption = None,
    batch: DetectorBatchOption = 16,
    device: TrainDeviceOption = None,
    from_model: Annotated[
        str | None, typer.Option("--from", help="Fine-tune from this model version.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Resume the last interrupted run of this dataset (of --model's architecture "
            "where given, else of any)."
        ),
    ] = False,
    name: Annotated[
        str | None,
        typer.Option(
            help="Name of the training run, its folder under runs/: letters, digits, '-', '_', "
            "'.' (default: the dataset, the architecture and the time); --resume looks for it."
        ),
    ] = None,
    seed: SeedOption = 0,
    plots: Annotated[bool, typer.Option(help="Save training plots.")] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Data-loading processes on a GPU (a GPU wants several); on a CPU, "
            "ultralytics loads in the training process and this has no effect.",
        ),
    ] = 2,
    hours: HoursOption = None,
) -> None:
    """Train (or fine-tune) a detector; the result is registered as a candidate model version."""
    from training.train_detector import TrainRequest, train_detector

    _warn_ignored_on_resume(
        ctx, resume, ("epochs", "imgsz", "batch", "device", "seed", "plots", "workers", "hours")
    )
    request = TrainRequest(
        data=data,
        architecture=model,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        from_model=from_model,
        resume=resume,
        name=name,
        seed=seed,
        plots=plots,
        hours=hours,
        workers=workers,
    )
    _say_registered(
        train_detector(request, url=migrated_database_url()),
        lambda version: (
            f": val mAP50 {version.metrics.get('val_map50', 0):.3f}; "
            + _how_to_evaluate(version, data)
        ),
    )


def _how_to_evaluate(version: ModelVersion, data: str) -> str:
    """The evaluate command to run next, where the dataset has test images: a small import can
    put none in test, and the command named was refused ("the dataset's test split holds no
    image")."""
    from training.datasets import located_dataset, split_image_paths

    evaluate = f"evaluate it with `defects evaluate {version.name} --data {data} --split test`"
    if version.dataset is None:
        return evaluate
    try:  # (the test images as `defects evaluate` finds them)
        tested = split_image_paths(located_dataset(version.dataset.root_path), "test")
    except UserError:  # (no test folder at all)
        tested = []
    if tested:
        return evaluate
    return (
        f"{data}'s test split holds no image to evaluate it on: import the dataset again "
        "with --splits (or more images) and `--replace`"
    )


DISTILL_STUDENT = "defect-yolo-n"  # a distillation's student when neither --student nor --from


class DistillMethod(StrEnum):
    FEATURE = "feature"
    CWD = "cwd"


@distill_app.command("detector")
def distill_detector_command(
    ctx: typer.Context,
    teacher: Annotated[str, typer.Option(help="Teacher detector version (frozen).")],
    data: DataOption,
    student: Annotated[
        str | None,
        typer.Option(
            help="Student architecture (default defect-yolo-n; with --from, that version's "
            "own; with --resume, the interrupted run's, of any scale)."
        ),
    ] = None,
    from_model: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Start the student from this version (retraining that keeps old defects).",
        ),
    ] = None,
    epochs: EpochsOption = 100,
    imgsz: DetectorImgszOption = None,
    batch: DetectorBatchOption = 16,
    method: Annotated[
        DistillMethod,
        typer.Option(
            help="feature: ultralytics' score-weighted L2 on the neck; "
            "cwd: channel-wise distillation (spatial distributions per channel)."
        ),
    ] = DistillMethod.FEATURE,
    weight: Annotated[
        float | None,
        typer.Option(help="Weight of the distillation loss (default: 6 for feature, 3 for cwd)."),
    ] = None,
    device: TrainDeviceOption = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Resume the last interrupted run of this teacher, with the loss it was started with."
        ),
    ] = False,
    seed: SeedOption = 0,
    hours: HoursOption = None,
) -> None:
    """Train a student detector with feature distillation from a frozen teacher."""
    from training.train_detector import TrainRequest, train_detector

    _warn_ignored_on_resume(
        ctx, resume, ("epochs", "imgsz", "batch", "method", "weight", "device", "seed", "hours")
    )
    request = TrainRequest(
        data=data,
        # (With --from, the version's own: a default of defect-yolo-n refused to retrain an
        # s-scale production model with itself as teacher unless --student named its scale.
        # With --resume, the interrupted run's: an s- or m-scale student's run was not looked
        # for, and "no interrupted training of DATA-defect-yolo-n" said.)
        architecture=student or (None if from_model or resume else DISTILL_STUDENT),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        from_model=from_model,
        resume=resume,
        seed=seed,
        teacher=teacher,
        distill_method=method.value,  # type: ignore[arg-type]  # the enum's values are the literals
        distill_weight=weight,
        hours=hours,
    )
    _say_registered(train_detector(request, url=migrated_database_url()), _distilled_from)


@distill_app.command("classifier")
def distill_classifier_command(
    teacher: Annotated[str, typer.Option(help="Teacher classifier version (frozen).")],
    data: DataOption,
    student: Annotated[str, typer.Option(help="Student backbone.")] = "mobilenet_v3_small",
    epochs: EpochsOption = 30,
    imgsz: ClassifierImgszOption = 128,
    batch: ClassifierBatchOption = 32,
    temperature: Annotated[
        float,
        typer.Option(min=1.0, help="Softens the teacher's class probabilities the student learns."),
    ] = 4.0,
    device: DeviceOption = None,
    name: VersionNameOption = None,
    seed: SeedOption = 0,
) -> None:
    """Train a student classifier on soft targets (Hinton) and the teacher's FPN features."""
    from training.train_classifier import ClassifierTrainRequest, train_classifier

    request = ClassifierTrainRequest(
        data=data,
        backbone=student,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        seed=seed,
        teacher=teacher,
        temperature=temperature,
        name=name,
    )
    _say_registered(train_classifier(request, url=migrated_database_url()), _distilled_from)


@train_app.command("classifier")
def train_classifier_command(
    data: DataOption,
    backbone: Annotated[
        str, typer.Option(help="resnet18, mobilenet_v3_small or efficientnet_b0.")
    ] = "resnet18",
    epochs: EpochsOption = 30,
    imgsz: ClassifierImgszOption = 128,
    batch: ClassifierBatchOption = 32,
    device: DeviceOption = None,
    name: VersionNameOption = None,
    seed: SeedOption = 0,
    hard_negatives_from: Annotated[
        str | None,
        typer.Option(
            help="Detector version whose false detections on the training images are learned "
            "as good crops, so that verification rejects the false calls that detector makes."
        ),
    ] = None,
) -> None:
    """Train the part/crop classifier (good + defect classes) on an imported dataset."""
    from training.train_classifier import ClassifierTrainRequest, train_classifier

    request = ClassifierTrainRequest(
        data=data,
        backbone=backbone,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        seed=seed,
        name=name,
        hard_negatives_from=hard_negatives_from,
    )
    _say_registered(
        train_classifier(request, url=migrated_database_url()),
        lambda version: (
            f": val accuracy over parts and crops {version.metrics.get('val_accuracy', 0):.3f}"
        ),
    )


@app.command("calibrate")
def calibrate_command(
    model: Annotated[str, typer.Argument(help="Detector model version id or name.")],
    data: DataOption,
    split: Annotated[str, typer.Option(help="Split to calibrate on (not the test split).")] = "val",
    max_miss_rate: Annotated[
        # (Its range is calibrate_model's, the Settings page's rule too: this allowed 0.99,
        # the page 0.5. Not imported here: training.calibrate would slow every command's start.)
        float,
        typer.Option(help="Target part miss rate, e.g. 0.005."),
    ] = 0.005,
    classifier: Annotated[
        str | None, typer.Option(help="Classifier version to use with the detector.")
    ] = None,
    verify_threshold: Annotated[
        str | None,
        typer.Option(
            help="Crop defect probability a detection needs (with --classifier), or auto: "
            "the crop threshold that meets the target with the fewest false calls, "
            "verification off included."
        ),
    ] = None,
    device: DeviceOption = None,
    class_thresholds: Annotated[
        str,
        typer.Option(
            help="per-class, shared (one threshold for every class) or auto: shared unless the "
            "split holds at least classes / target defective parts, since per-class thresholds "
            "learned from few parts miss more on new parts."
        ),
    ] = "auto",
) -> None:
    """Pick the thresholds that hold a miss-rate target with the fewest false calls."""
    import math

    from training.calibrate import PART, calibrate_model, calibration_notes, choice_lines

    if split == "test":
        console.print(
            "calibrating on the test split: its figures are then no longer held out, "
            "and rates reported on it will look better than new parts will show",
            style="yellow",
        )
    stored = calibrate_model(
        migrated_database_url(),
        model,
        data,
        split,
        max_miss_rate,
        classifier,
        verify_threshold,
        device,
        class_thresholds,
    )
    result, dimensions = stored.calibration, stored.dimensions
    report = stored.operating_point["calibration"]
    if stored.classifier_archived:  # (said by its name: --classifier may give its id)
        console.print(
            f"{stored.operating_point['classifier']['version']} was archived: it is a candidate "
            f"again, since the operating point of {stored.detector_name} names it",
            style="yellow",
            markup=False,
        )
    table = Table("class", "threshold")
    for name in dimensions:
        value = result.thresholds[name]
        label = "part classifier" if name == PART else name
        table.add_row(label, f"{value:.4f}" if math.isfinite(value) else "off")
    console.print(table)
    for level, note in calibration_notes(result):
        console.print(note, style="yellow" if level == "warning" else None)
    if report.get("grid_warning"):
        console.print(report["grid_warning"], style="yellow", markup=False)
    ucb = report["miss_rate_upper_95"]
    console.print(
        f"{data}/{split}: miss rate {_fmt(result.miss_rate)} ({result.n_missed} of "
        f"{result.n_defective} defective parts; 95% upper bound {_fmt(ucb)}), target {max_miss_rate}"
    )
    if result.n_good:
        console.print(
            f"false-call rate {_fmt(result.false_call_rate)} ({result.n_false_calls} of "
            f"{result.n_good} good parts; 95% upper bound {_fmt(report['false_call_rate_upper_95'])})"
        )
    console.print("(95% upper bounds: one-sided, Clopper-Pearson exact)")
    if result.miss_rate is not None and result.miss_rate > max_miss_rate:
        console.print(
            "the target cannot be met on this split: some defects are never scored", style="red"
        )
    for line in choice_lines(stored.operating_point, verify_auto=verify_threshold == "auto"):
        console.print(line, markup=False)
    console.print(f"stored as the operating point of {stored.detector_name}", markup=False)


@app.command("evaluate")
def evaluate_command(
    model: Annotated[
        str,
        typer.Argument(help="Weights file (.pt, or a detector's .onnx) or model version id/name."),
    ],
    data: DataOption,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results here.")
    ] = None,
    imgsz: Annotated[
        int | None, typer.Option(help="Input size (pixels); default: the training size.")
    ] = None,
    device: DeviceOption = None,
) -> None:
    """mAP, per-class AP and recall, part miss rate and false-call rate at the operating point."""
    from inspection.settings import resolve_device

    # (It ran on the CPU whatever DEFECTS_DEVICE said: a GPU machine's test split, slowly.)
    device = resolve_device(device)

    from training.evaluate import evaluate_detector, resolve_model

    url = migrated_database_url()
    weights, thresholds, version_name, note = resolve_model(model, url)
    if note:
        console.print(note, style="yellow", markup=False)
    if _is_classifier(weights, url, version_name):
        if imgsz is not None:
            raise UserError(
                "--imgsz is for detectors: a classifier is evaluated at its training size"
            )
        _evaluate_classifier(weights, data, split, thresholds, device, url, version_name, json_path)
        return
    result = evaluate_detector(
        weights, data, split, thresholds=thresholds, imgsz=imgsz, device=device, url=url
    )
    payload = result.to_json()
    if version_name is not None:
        _store_evaluation(url, version_name, data, split, payload)
    table = Table("class", "AP50", "AP50-95", "recall at threshold", "boxes", "threshold")
    for name, row in result.per_class.items():
        table.add_row(
            name,
            _fmt(row["ap50"]),
            _fmt(row["ap50_95"]),
            _fmt(row["recall"]),
            str(row["n_boxes"]),
            _fmt(row["threshold"]),
        )
    console.print(table)
    if (verify := result.extra.get("recall_after_verification")) is not None:
        console.print(
            f"recall at threshold counts the detections crop verification at {verify:.4g} keeps"
        )
    rates = result.rates
    tiles = result.extra.get("n_tiles")
    console.print(
        f"{data}/{split}: {result.n_images} parts"
        + (f" in {tiles} tiles, mAP over tiles:" if tiles is not None else ",")
        + f" mAP50 {_fmt(result.map50)}, mAP50-95 {_fmt(result.map50_95)}"
        + ("" if result.map50 is not None else " (no labeled defect to measure them on)")
    )
    console.print(
        f"miss rate {_fmt(rates.miss_rate)} ({rates.n_missed} of {rates.n_defective} defective parts)"
    )
    console.print(_false_call_figure(rates))
    if result.extra.get("part_figures_with_classifier"):
        console.print(
            "part figures of the whole verdict, with classifier "
            f"{result.extra['part_figures_with_classifier']} as the operating point names it"
        )
    if (warning := result.extra.get("grid_warning")) is not None:
        console.print(warning, style="yellow", markup=False)
    if (grid := result.extra.get("part_figures_in_tiles")) is not None:
        console.print(
            f"part figures as stations judge the parts, in the model's {grid['size']} px tiles "
            f"({grid['overlap']:.0%} overlap); mAP and recall of the images whole",
            markup=False,
        )
    _write_json(json_path, payload)


def _false_call_figure(rates: PartCounts) -> str:
    """The false-call rate with its counts, said the same for a detector and a classifier: a
    split without good parts printed "- (0 of 0)" for a classifier, a rate of nothing."""
    if not rates.n_good:
        return "false-call rate: the split has no good parts"
    return (
        f"false-call rate {_fmt(rates.false_call_rate)} "
        f"({rates.n_false_calls} of {rates.n_good} good parts)"
    )


def _write_json(json_path: Path | None, payload: dict) -> None:
    """Written under another name and renamed once whole, synced: written in place, a full disk
    or a power cut left half a JSON file at the name, which the scripts reading it failed to
    parse. A failure is one line naming the file (a device or a pipe, `/dev/stdout`, is written
    as it is)."""
    import json

    from inspection.images import replace_synced, write_advice

    if not json_path:
        return
    special = json_path.exists() and not json_path.is_file()
    target = json_path if special else json_path.resolve()
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        (target if special else partial).write_text(json.dumps(payload, indent=2))
        if not special:
            replace_synced(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UserError(
            f"cannot write the results {json_path}: {exc.strerror or exc}; {write_advice(exc)}"
            "give --json another place and run the same command again"
        ) from exc
    console.print(f"wrote {json_path}")


def _is_classifier(weights: Path, url: str, version_name: str | None) -> bool:
    """A version's kind where a version was named; a file's, by its contents. A classifier
    version whose weights cannot be read (damaged, cut short) was taken for a detector by its
    file: ultralytics' message, and for an export a scratch folder's path, said of it. Looked
    up by its name alone: a name of digits ("1") read as an id was another version's kind."""
    if version_name is not None:
        with session_scope(url) as session:
            return named_version(session, version_name).kind == ModelKind.CLASSIFIER
    import torch

    try:
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception:  # a full ultralytics checkpoint does not load as plain weights
        return False
    return isinstance(checkpoint, dict) and checkpoint.get("kind") == "defect-classifier"


def _evaluate_classifier(
    weights: Path,
    data: str,
    split: str,
    thresholds: dict | None,
    device: str,
    url: str,
    version_name: str | None,
    json_path: Path | None,
) -> None:

    from training.evaluate import evaluate_classifier

    part_threshold = float((thresholds or {}).get("part", 0.5))
    where = "its own default"
    if version_name is not None:
        # (A classifier's own thresholds are a placeholder: stations fail parts at the part
        # threshold the production detector's calibration stored for it. At 0.5, the rates
        # printed here were not the ones the line ran at.)
        from db.registry import production_model

        with session_scope(url) as session:
            detector = production_model(session, ModelKind.DETECTOR)
            used = ((detector.thresholds or {}).get("classifier") or {}) if detector else {}
            if used.get("version") == version_name and used.get("part") is not None:
                part_threshold = float(used["part"])
                where = f"the part threshold of {detector.name}'s operating point"  # type: ignore[union-attr]
    result = evaluate_classifier(weights, data, split, part_threshold, device, url)
    payload = result.to_json()
    if version_name is not None:
        _store_evaluation(url, version_name, data, split, payload)
    table = Table("truth \\ predicted", *result.class_names)
    for name, row in zip(result.class_names, result.confusion, strict=True):
        table.add_row(name, *(str(v) for v in row))
    console.print(table)
    recall = ", ".join(f"{k} {_fmt(v)}" for k, v in result.per_class_recall().items())
    console.print(f"{data}/{split}: top-1 accuracy {result.accuracy:.3f}; recall {recall}")
    rates = result.rates
    console.print(
        f"at defect probability >= {part_threshold:.4g} ({where}): miss rate "
        f"{_fmt(rates.miss_rate)} "
        f"({rates.n_missed} of {rates.n_defective} defective parts), {_false_call_figure(rates)}"
    )
    _write_json(json_path, payload)


HEADLINE_KEYS = ("map50", "map50_95", "top1_accuracy", "miss_rate", "false_call_rate")


def _store_evaluation(url: str, version_name: str, data: str, split: str, payload: dict) -> None:
    """Every evaluation under `evaluations["DATA:SPLIT"]`. The headline figures (the model
    list's, the dashboard's) come from the test split of the dataset the version was trained
    on only: any dataset's test figures replaced them, whichever was evaluated last. A figure
    the split cannot give (null: no labeled defect) never replaces a measured one."""
    with session_scope(url) as session:
        # (By name alone: a version named with digits was taken for the version of that id.)
        version = named_version(session, version_name)
        metrics = dict(version.metrics or {})
        evaluations = dict(metrics.get("evaluations", {}))
        evaluations[f"{data}:{split}"] = payload
        metrics["evaluations"] = evaluations
        trained_on = version.dataset.name if version.dataset is not None else None
        if split == "test" and data == trained_on:
            metrics.update(
                {
                    k: payload[k]
                    for k in HEADLINE_KEYS
                    if k in payload and (payload[k] is not None or metrics.get(k) is None)
                }
            )
        version.metrics = metrics


@app.command("export")
def export_command(
    model: Annotated[str, typer.Argument(help="Weights file (.pt) or model version id/name.")],
    format: Annotated[str, typer.Option(help="Export format: onnx, the only one.")] = "onnx",
    half: Annotated[
        bool,
        typer.Option(
            help="Computed in float16, for GPU stations (made on a CPU too; float32 in and out)."
        ),
    ] = False,
    dynamic: Annotated[bool, typer.Option(help="Dynamic batch and image size.")] = False,
    imgsz: Annotated[
        int | None, typer.Option(help="Input size (pixels); default: the training size.")
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            help="cpu, cuda or cuda:N: where the model is traced for the export (not "
            "DEFECTS_DEVICE: an export made on a CPU runs on a GPU too)."
        ),
    ] = "cpu",
    int8: Annotated[
        bool, typer.Option(help="Also write an INT8 ONNX for CPU stations (needs --data).")
    ] = False,
    data: Annotated[
        str | None, typer.Option(help="Dataset whose training images calibrate INT8.")
    ] = None,
    calibration_images: Annotated[
        int,
        typer.Option(min=8, help="Training images INT8 is calibrated on, spread over the split."),
    ] = 120,
    compact: Annotated[
        bool,
        typer.Option(
            help="Store the weights as float16 (half the file), still computed in float32; "
            "float16 rounding moves a few detections slightly: check with defects evaluate."
        ),
    ] = False,
) -> None:
    """Export a detector to ONNX, with class names and thresholds in its metadata."""
    from inspection.settings import resolve_device
    from training.evaluate import resolve_model
    from training.export import export_detector

    if format != "onnx":
        raise UserError(f"export format {format!r} is not supported; use onnx")
    # (Anything but cuda... was exported on the CPU without a word: --device gpu, --device 0.)
    device = resolve_device(device)
    if int8 and data is None:  # (said before the float32 export, not after)
        raise UserError("--int8 needs --data: INT8 is calibrated on that dataset's training images")
    if int8 and half:
        raise UserError("--int8 is quantized from the float32 export: leave out --half")
    url = migrated_database_url()
    weights, thresholds, version_name, _ = resolve_model(model, url)
    if _is_classifier(weights, url, version_name):
        from training.export import export_classifier

        ignored = [
            flag
            for flag, given in (
                ("--half", half),
                ("--dynamic", dynamic),  # (a classifier's ONNX has a dynamic batch anyway)
                ("--imgsz", imgsz is not None),
                ("--int8", int8),
                ("--compact", compact),
            )
            if given
        ]
        if ignored:
            raise UserError(
                f"{' '.join(ignored)}: for detectors only; a classifier is exported in float32 "
                "at its training size, with a dynamic batch"
            )

        console.print(f"wrote {export_classifier(weights, version_name)}")
        return
    path = export_detector(
        weights,
        imgsz=imgsz,
        half=half,
        thresholds=thresholds,
        version_name=version_name,
        device=device,
        dynamic=dynamic or int8,
    )
    console.print(f"wrote {path}")
    if path.name != weights.with_suffix(".onnx").name:
        console.print(
            f"{weights.with_suffix('.onnx').name}, the file stations here run, is unchanged: "
            "this export is named for its precision and size",
            markup=False,
        )
    if int8:
        from training.datasets import dataset_yaml, split_image_paths
        from training.export import quantize_int8

        assert data is not None
        with session_scope(database_url()) as session:
            root = dataset_yaml(session, data)[1].parent
        images = split_image_paths(root, "train")
        step = max(1, len(images) // calibration_images)
        from training.export import METADATA_PREFIX, read_metadata

        # The size the file was exported at (the checkpoint was loaded a third time for it).
        size = int(read_metadata(path)[METADATA_PREFIX + "imgsz"])
        console.print(f"wrote {quantize_int8(path, images[::step], size)}")
    if compact:  # after INT8, which is quantized from the float32 weights
        from training.export import store_weights_as_float16

        console.print(f"stored the weights of {store_weights_as_float16(path)} as float16")


class BackendOption(StrEnum):
    auto = "auto"
    pytorch = "pytorch"
    onnx = "onnx"
    onnx_int8 = "onnx-int8"


BackendArgument = Annotated[
    BackendOption,
    typer.Option(
        help="auto: ONNX Runtime for a .onnx model, and on a CPU for a .pt model with its "
        "exported .onnx beside it; PyTorch otherwise."
    ),
]
TileArgument = Annotated[
    str | None,
    typer.Option(
        metavar="SIZE[:OVERLAP]|off",
        help="Judge a part larger than SIZE pixels in tiles of SIZE at its own resolution, "
        "neighbours sharing OVERLAP (0.2 or 20%; default 0.2), each tile's defects merged back "
        "into the part; off: every part whole. Default: the grid the model was trained on "
        "(none: whole).",
    ),
]


def _tile_choice(tile: str | None) -> TileChoice:
    """`--tile`, refused in one line before the model loads."""
    from inspection.engine import parse_tile

    return "model" if tile is None else parse_tile(tile)


def _counted(n: int, noun: str) -> str:
    """`n` and its noun, plural unless 1: the summary said "1 parts inspected"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _print_summary(summary, rate: bool = True) -> None:  # type: ignore[no-untyped-def]
    """`rate`: False where the run's clock also counted the waits for a camera."""
    from db.queries import percentile

    console.print(
        f"run {summary.run_id} with {summary.model_name}: "
        f"{_counted(summary.inspected, 'part')} inspected, {summary.failed} failed, "
        f"{_counted(summary.errors, 'error')}, {summary.skipped} already inspected"
    )
    if summary.rejudged:
        console.print(
            f"{summary.rejudged} of the parts inspected had been judged by {summary.model_name} "
            "at other thresholds (before a recalibration), in another --tile grid or refused "
            "for their size at another DEFECTS_MAX_MEGAPIXELS; they were judged again as now, "
            "to a pass or a fail, and their earlier verdicts kept, marked superseded (a part "
            "judged again to an error is counted among the errors only)"
        )
    from db.queries import PART_CLASSIFIER_ALONE

    by_class = [
        (k, v) for k, v in summary.failed_by_class.most_common() if k != PART_CLASSIFIER_ALONE
    ]
    if by_class:
        console.print("failed by class: " + ", ".join(f"{k} {v}" for k, v in by_class))
    if summary.failed_by_class[PART_CLASSIFIER_ALONE]:
        console.print(
            f"failed by the part classifier alone (no defect found): "
            f"{summary.failed_by_class[PART_CLASSIFIER_ALONE]}"
        )
    if summary.errors_by_reason:
        by_reason = ", ".join(f"{k} {v}" for k, v in summary.errors_by_reason.most_common())
        console.print(f"errors by kind: {by_reason}", markup=False)
    if summary.latencies_ms:
        ordered = sorted(summary.latencies_ms)
        console.print(
            (f"throughput {summary.parts_per_second:.1f} parts/s; " if rate else "")
            + f"latency p50 {percentile(ordered, 50):.1f} ms, p99 {percentile(ordered, 99):.1f} ms"
        )


def _print_moved(summary, source: str, destination: Path) -> None:  # type: ignore[no-untyped-def]
    """What `--move-judged` did: the files moved, and those left in the source."""
    errors = f" ({summary.moved_errors} recorded as errors, in {destination / 'errors'})"
    console.print(
        f"{_counted(summary.moved, 'file')} moved to {destination}"
        + (errors if summary.moved_errors else ""),
        markup=False,
        soft_wrap=True,
    )
    if summary.not_moved:
        console.print(
            f"warning: {_counted(summary.not_moved, 'file')} could not be moved and stay in "
            f"{source}, their verdicts kept; the same command started again moves them",
            style="yellow",
            markup=False,
            soft_wrap=True,
        )


def _wall_time_went(moments: dict[str, float], entered: float, listing_s: float) -> str | None:
    """Where a parallel run's wall time went, start-up and exit included: the throughput
    counts only from the first worker ready to the last part written."""
    from training import LOADING_SINCE

    if not {"launched", "dealing", "first_ready", "last_done", "exited"} <= moments.keys():
        return None  # (stopped, or no worker ever ready)
    # The workers start before the folder is listed: the listing is within their start.
    judging_from = max(moments["first_ready"], moments["dealing"])
    spans = [
        ("starting Python and loading the product", entered - LOADING_SINCE),
        ("opening the run", moments["launched"] - entered),
        (
            f"starting the workers ({listing_s:.1f} s of it listing the folder)",
            judging_from - moments["launched"],
        ),
        ("judging", moments["last_done"] - judging_from),
        ("for the workers to exit", moments["exited"] - moments["last_done"]),
    ]
    total = moments["exited"] - LOADING_SINCE
    return f"the command's {total:.1f} s until the workers had exited: " + ", ".join(
        f"{seconds:.1f} s {what}" for what, seconds in spans
    )


def _refuse_unreadable_source(source: Path) -> int | None:
    """A folder this user cannot list, or a zip given alone that cannot be opened, refused
    before the model loads: either stopped the command only after a run had been opened on
    the station, which then showed as its latest run with no part. A zip's number of items
    is given back (None for another source)."""
    from inspection.batch import is_zip_archive, not_a_source_error, zip_item_count

    not_a_source = not_a_source_error(source)
    if not_a_source is not None:  # (a named pipe: said now, not "source not found" later)
        raise UserError(not_a_source)
    if source.is_dir():
        try:
            with os.scandir(source):
                pass
        except OSError as exc:
            raise UserError(f"cannot read the folder {source}: {exc.strerror or exc}") from exc
    elif source.is_file() and is_zip_archive(source):
        return zip_item_count(source, source.name)  # (its directory only: nothing unpacked)
    return None


@app.command("batch")
def batch_command(
    source: Annotated[str, typer.Argument(help="A folder, a glob pattern or a zip of images.")],
    line: Annotated[str, typer.Option(help="Production line.")],
    station: Annotated[str, typer.Option(help="Station (camera) on the line.")],
    model: ModelOption = None,
    watch: Annotated[
        bool, typer.Option(help="Keep inspecting files that appear in the folder.")
    ] = False,
    export: Annotated[str | None, typer.Option(help="Write the run's results: csv.")] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            help="The export's file (default run-N.csv); a .csv name implies --export csv."
        ),
    ] = None,
    operator: Annotated[str, typer.Option(help="Who runs the batch.")] = "",
    backend: BackendArgument = BackendOption.auto,
    device: DeviceOption = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Parts per forward pass (default: 1 per core with ONNX Runtime on a CPU, "
            "DEFECTS_CPU_STREAMS; the backend's largest otherwise).",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Processes that inspect the source side by side, each with the model loaded "
            "and its share of the cores: for a GPU station with cores to spare, where one "
            "process is the limit (measure with bench/inference.py --workers 1 4); with --watch, "
            "the model is loaded once for the whole watch.",
        ),
    ] = 1,
    move_judged: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Move each file out of the folder into DIR once its part is recorded (image "
            "stored, verdict committed), at its path under the folder; files recorded as errors "
            "go to DIR/errors. A name taken in DIR gets a suffix; a file that cannot be moved "
            "stays, its verdict kept. Zips are left where they are.",
        ),
    ] = None,
    results: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Append each part's verdict to FILE as a line of JSON once it is recorded "
            "(JSON Lines, flushed per part: for a reject gate, PLC bridge or MES to follow); "
            "a file whose part was judged before gets that verdict, as a repeat, except parts judged "
            "by an earlier run in the source as the run began. A named pipe's reader that falls "
            "behind or leaves never stops the run: its lines are held, then dropped with a warning.",
        ),
    ] = None,
    tile: TileArgument = None,
) -> None:
    """Inspect a batch of parts; run again after an interruption and it resumes."""
    import threading
    import time

    from tqdm import tqdm

    entered = time.perf_counter()

    from inspection.batch import (
        BatchInspection,
        export_run_csv,
        file_key,
        folder_files,
        iter_source,
        model_file,
        noting_keys,
        settled_files,
    )
    from inspection.engine import PartResult
    from inspection.parallel import ParallelInspection

    if export not in (None, "csv"):
        raise UserError(f"export format {export!r} is not supported; use csv")
    tile_choice = _tile_choice(tile)
    if export is None and output is not None:
        # (--output alone wrote nothing, without a word: a .csv name says what is wanted.)
        if output.suffix.lower() != ".csv":
            raise UserError(f"--output {output}: add --export csv (or name a .csv file)")
        export = "csv"
    named_keys: list[tuple[str, str]] = []  # each file read, for the CSV
    if export == "csv" and output is not None and output.is_dir():
        # (Said now, not after the whole batch has run.)
        raise UserError(f"--output {output} is a folder: give the CSV file's name")
    source_path = Path(source)
    # (Said before the model loads; a glob that matches nothing is said by iter_source.)
    if not source_path.exists() and (watch or not any(ch in source for ch in "*?[")):
        raise UserError(f"{'folder to watch' if watch else 'source'} not found: {source}")
    if watch and not source_path.is_dir():
        from inspection.images import file_kind

        raise UserError(
            f"--watch needs a folder: {source} is {file_kind(source_path.stat().st_mode)}"
        )
    zip_items = _refuse_unreadable_source(source_path)
    mover = None
    if move_judged is not None:
        from inspection.judged import JudgedMover, judged_folder

        mover = JudgedMover(source_path, judged_folder(source_path, move_judged))
    feed = None
    if results is not None:
        from inspection.results import ResultsFeed

        if results.is_fifo():  # (opening it waits, without a word, until a reader opens it)
            console.print(f"waiting for a reader of the named pipe {results}", markup=False)
        feed = ResultsFeed(results)  # (refused now, not after the model has loaded)
    try:
        url = migrated_database_url()
        settings = get_settings()
        options = {
            "model": model,
            "operator": operator,
            "source": source,
            "backend": backend.value,
            "device": device,
            "batch_size": batch_size,
            "tile": tile_choice,
        }
        job: BatchInspection | ParallelInspection
        if workers > 1:
            # (The folder as the files are listed, not resolved: a file listed under a link to
            # the folder is not under its real path, and a worker would move none of them.)
            moving = (Path(mover.source), mover.destination) if mover is not None else None
            job = ParallelInspection(
                url, settings.images_dir, line, station, workers, move_judged=moving, **options
            )
            named = f" ({Path(model).name})" if model_file(model) else ""
            console.print(
                f"inspecting with {job.model_name}{named} in {workers} worker processes",
                markup=False,
            )
            # (Their seconds of start-up pass while the folder is listed; only a feed needs
            # the repeats worked out.)
            job.start(repeats=feed is not None)
        else:
            job = BatchInspection(url, settings.images_dir, line, station, mover=mover, **options)
            console.print(
                f"inspecting with {job.model_name} ({job.inspector.backend.describe()}, "
                f"{job.inspector.backend.model_path.name})",
                markup=False,
            )
            if (tiling := job.inspector.tiling_note()) is not None:
                console.print(tiling, markup=False)
    except BaseException:
        # (A model or database refused: the feed opened first is closed, a named pipe's
        # reader told the end, not left waiting on a run that never began.)
        if feed is not None:
            feed.close()
        raise
    try:
        listing = time.perf_counter()
        files = folder_files(source_path) if source_path.is_dir() else []
        listing = time.perf_counter() - listing
        if source_path.is_dir() and not files:  # ("0 parts inspected", exit 0, said nothing)
            console.print(
                f"warning: no file to inspect in {source} (hidden files are never read)"
                + ("; watching for new ones" if watch else ""),
                style="yellow",
                markup=False,
                soft_wrap=True,
            )
        if zip_items == 0:  # (as an empty folder: "0 parts inspected" without a word)
            console.print(
                f"warning: no file to inspect in {source} (its folders and hidden files are "
                "never read)",
                style="yellow",
                markup=False,
                soft_wrap=True,
            )
        # (A zip inside the folder gives its entries: their number is known only as they come.)
        total = len(files) if files and not any(f.suffix.lower() == ".zip" for f in files) else None
        bar = tqdm(total=total, unit="part", disable=None)

        def on_result(result: PartResult) -> None:
            bar.update(1)
            if result.latency_ms is not None:
                bar.set_postfix_str(f"{result.latency_ms:.0f} ms {result.verdict}")

        def on_recorded(recorded: list[PartResult], repeats: list[PartResult]) -> None:
            """The feed's lines, once their chunk is committed (never for a verdict lost)."""
            if feed is not None:
                for result in recorded:
                    feed.write(result, line, station, job.run_id)
                for result in repeats:
                    feed.write(result, line, station, job.run_id, repeat=True)
                if recorded or repeats:
                    feed.sync()

        recording = on_recorded if feed is not None else None

        if watch:  # a file written just now may be half-written: the watch settles it first
            files = settled_files(files)
        # The folder's files as they are now: read below, then left alone unless they change.
        known = {key for key in map(file_key, files) if key is not None} if watch else set()
        stopped = False
        try:
            if watch:
                console.print(f"watching {source} (Ctrl-C to stop)")
            if watch and isinstance(job, ParallelInspection):
                job.watch(
                    source_path,
                    threading.Event(),
                    on_result,
                    iter_source(source, files) if files else iter(()),
                    known,
                    on_recorded=recording,
                )
            elif watch:
                job.watch(
                    source_path,
                    threading.Event(),
                    on_result,
                    known=known,
                    first=iter_source(source, files) if files else (),
                    on_recorded=recording,
                )
            else:
                items = iter_source(source, files or None)
                if export == "csv":  # the CSV lists every file read, judged now or before
                    items = noting_keys(items, named_keys)
                # (Parts judged before move the bar too: a resumed run's stopped at the share
                # left to judge, "1000/10000" at the end, and a finished one's stayed at 0.)
                job.run(items, on_result, on_skipped=bar.update, on_recorded=recording)
        except KeyboardInterrupt:
            bar.close()
            stopped = True
            console.print("stopped; what was inspected is saved. Run the same command to resume.")
        except StorageError as exc:
            # (Said here, not in the error: the Inspect page's upload has no command to run
            # again, and a worker's stop, which says what was written is kept, said it twice.)
            raise StorageError(
                f"{exc}; what was written is kept: run the same command again to resume"
            ) from exc
        finally:
            bar.close()
            if isinstance(job, BatchInspection):
                job.inspector.close()
    finally:
        if isinstance(job, ParallelInspection):
            job.close()  # workers no run took over (the listing failed or was interrupted)
        if feed is not None:
            feed.close()
            if feed.dropped:  # (lines a named pipe's reader never got: why_not_sent says why)
                console.print(
                    f"warning: {feed.dropped} lines of the results feed {results} were not sent "
                    f"({feed.why_not_sent()}); their verdicts are recorded in the database: the "
                    "History page shows them"
                    + ("" if watch else ", and the same command with --export csv lists them"),
                    style="yellow",
                    markup=False,
                    soft_wrap=True,
                )
    if isinstance(job, ParallelInspection) and job.ready_after_s:
        imported = max(phases[0] for phases in job.start_phases_s)
        loaded = max(phases[1] - phases[0] for phases in job.start_phases_s)
        console.print(
            f"{len(job.ready_after_s)} of {workers} workers ready after "
            f"{min(job.ready_after_s):.1f} to {max(job.ready_after_s):.1f} s (each starts an "
            "interpreter and loads the model once per run: at most "
            f"{imported:.1f} s to start and import, {loaded:.1f} s to load the model; "
            "throughput counts from the first)"
        )
        parts, seconds = job.after_all_ready
        # (A short run: a rate of its last batches; a watch: of the camera too.)
        long_run = job.summary.inspected >= 100 * workers
        # (Of a stopped run, rates and where its time went mean nothing.)
        if long_run and parts > 0 and seconds > 0 and not watch and not stopped:
            console.print(
                f"{parts / seconds:.1f} parts/s once every worker was ready ({parts} parts)"
            )
            # (Of a short run, what each waited for is mostly the others' start.)
            if (waits := job.who_waited()) is not None:
                console.print(waits)
        if (
            not watch
            and not stopped
            and (went := _wall_time_went(job.moments, entered, listing)) is not None
        ):
            console.print(went)  # (a watch's wall time is the camera's)
    # (One process counts only its time at work; workers run one clock for the whole watch.
    # A batch stopped part way: its clock ran on through the stop's writes and, in workers,
    # their ends, a rate the workers' lines above already leave out.)
    _print_summary(
        job.summary,
        rate=not (watch and isinstance(job, ParallelInspection)) and not (stopped and not watch),
    )
    if move_judged is not None:
        _print_moved(job.summary, source, move_judged)
    if export == "csv":
        target = output or Path(f"run-{job.run_id}.csv")
        # (A watch's CSV: the parts its run judged, as the files it read are without end.)
        rows = export_run_csv(url, job.run_id, target, None if watch else named_keys)
        console.print(f"wrote {rows} rows to {target}")
        if watch and job.summary.skipped:
            console.print(
                f"(the parts this watch judged; the {job.summary.skipped} judged before are not "
                "in it: their verdicts are in the run that judged them and the History page's CSV)"
            )
    if stopped and not watch:
        # A batch stopped part-way is not done: a script (or a service manager) that runs it
        # read exit 0 as every file judged. A watch has no end but its stop: 0.
        raise typer.Exit(130)


PRUNE_DAYS_LIMIT = 36525  # prune-images --older-than: a century
STATUS_MINUTES_LIMIT = PRUNE_DAYS_LIMIT * 24 * 60  # status --minutes: a century


def _errors_with_camera_faults(activity: StationActivity) -> str:
    """A station's errors, with how many were its camera's blank frames and empty captures."""
    faults = [
        f"{n} {kind}"
        for n, kind in [(activity.blank_frames, "blank"), (activity.empty_captures, "empty")]
        if n
    ]
    return f"{activity.errors} ({', '.join(faults)})" if faults else str(activity.errors)


@app.command("status")
def status_command(
    minutes: Annotated[
        int,
        typer.Option(
            min=1,
            # (A century at most: 1e10 minutes passed `min` and failed in the date arithmetic
            # with a traceback.)
            max=STATUS_MINUTES_LIMIT,
            help="How far back the counts go, in minutes.",
        ),
    ] = 60,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Each station's latest run and the verdicts it gave in the last minutes.

    The dashboard's Live page, for a station without a screen or a monitoring script.
    """
    import json
    from datetime import timedelta

    from db.models import database_utcnow
    from db.queries import station_activity
    from inspection.tiling import station_grid

    url = migrated_database_url()
    with session_scope(url) as session:
        # By the database's clock, as the stations stamp their verdicts (see database_utcnow).
        since = database_utcnow(session) - timedelta(minutes=minutes)
        activity = station_activity(session, since)
    if as_json:
        rows = [
            {
                "line": a.line,
                "station": a.station,
                "run_id": a.run_id,
                "run_open": a.run_open,
                "model": a.run_model,
                "grid": station_grid(a.run_tile, a.run_judged) or None,
                "source": a.run_source,
                "last_inspected_at": a.last_inspected_at.isoformat(timespec="seconds") + "Z"
                if a.last_inspected_at
                else None,
                "inspected": a.inspected,
                "failed": a.failed,
                "fail_rate": a.fail_rate,
                "errors": a.errors,
                "blank_frames": a.blank_frames,
                "empty_captures": a.empty_captures,
            }
            for a in activity
        ]
        print(json.dumps({"minutes": minutes, "stations": rows}, indent=2))
        return
    if not activity:
        # (Which database: a mistyped DEFECTS_DATABASE_URL, or a command run from another
        # folder, makes a new empty one, and "no station yet" alone hid that.)
        console.print(
            f"no station yet in {redact(url)}: `defects batch FOLDER --line L --station S` "
            "makes one",
            markup=False,
        )
        return
    table = Table(
        "line",
        "station",
        "run",
        "model",
        "grid",
        "last verdict (UTC)",
        "verdicts",
        "failed",
        "fail rate",
        "errors",
        title=f"the last {minutes} minutes",
        # Verdicts, not parts, as the Live page says: a candidate judging at a station beside
        # production (`defects batch --model`) gives each part a second verdict there, and a
        # column named "parts" read as twice the parts the station saw.
        caption="verdicts: each the station gave, a candidate's there too; a blank frame or "
        "empty capture each time it came",
    )
    rows = [
        (
            a.line,
            a.station,
            f"{a.run_id}{' open' if a.run_open else ''}" if a.run_id else "-",
            a.run_model or "-",
            station_grid(a.run_tile, a.run_judged) or "-",
            # (With its year: a station idle since last year read as today's.)
            a.last_inspected_at.strftime("%Y-%m-%d %H:%M:%S") if a.last_inspected_at else "-",
            str(a.inspected),
            str(a.failed),
            f"{a.fail_rate:.1%}" if a.fail_rate is not None else "-",
            _errors_with_camera_faults(a),
        )
        for a in activity
    ]
    _print_unbroken(table, rows, whole=(3,))  # (a model name is copied into commands)


@app.command("prune-images")
def prune_images_command(
    older_than: Annotated[
        float,
        typer.Option(
            min=1,
            # (A century at most: `inf` or 1e12 days passed `min` and failed in the date
            # arithmetic with a traceback.)
            max=PRUNE_DAYS_LIMIT,
            help="Days since a part was last judged before its image may be deleted.",
        ),
    ],
    keep_failed: Annotated[
        bool, typer.Option(help="Keep the images of parts whose current verdict is fail.")
    ] = True,
    keep_reviewed: Annotated[bool, typer.Option(help="Keep the images of reviewed parts.")] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be deleted; delete nothing.")
    ] = False,
    look_at_all: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Look at every old part again, not only those last judged since the last "
            "prune's cut-off.",
        ),
    ] = False,
) -> None:
    """Delete old parts' images from this machine's store; verdicts and reviews stay."""
    from tqdm import tqdm

    from inspection.store import LAST_PRUNE_FILE, prune_images

    settings = get_settings()
    with tqdm(unit="part", disable=None, desc="looking at old parts") as bar:
        report = prune_images(
            migrated_database_url(),
            settings.images_dir,
            older_than,
            keep_failed=keep_failed,
            keep_reviewed=keep_reviewed,
            dry_run=dry_run,
            on_progress=lambda seen: bar.update(seen - bar.n),
            look_at_all=look_at_all,
        )
    verb = "would delete" if dry_run else "deleted"
    console.print(
        f"{verb} {report.deleted} image(s), {report.freed_bytes / 1e6:.1f} MB, of parts last "
        f"judged over {older_than:g} day{'' if older_than == 1 else 's'} ago; their verdicts, "
        "detections and reviews stay",
        markup=False,
    )
    kept = [
        f"{n} {what}"
        for n, what in ((report.kept_failed, "failed"), (report.kept_reviewed, "reviewed"))
        if n
    ]
    if report.since is not None:
        console.print(
            "looked only at the parts last judged since the last prune's cut-off, "
            f"{report.since:%Y-%m-%d %H:%M} UTC (--all looks at every old part again)",
            markup=False,
        )
    if kept:
        # (Of those looked at: with the last cut-off, the parts last judged since it alone.)
        which = "that old" if report.since is None else "of those"
        console.print(f"kept the images of {' and '.join(kept)} part(s) {which}", markup=False)
    if report.already_gone:
        console.print(f"{report.already_gone} image(s) were gone already", markup=False)
    if report.elsewhere:
        console.print(
            f"{report.elsewhere} image(s) are recorded outside this machine's store "
            f"({settings.images_dir}) and not in it: kept on another machine (prune them "
            "there), or gone before the data folder moved; not touched",
            markup=False,
        )
    if report.partials:
        console.print(
            f"{verb} {report.partials} half-written file(s) left by a station stopped mid-write",
            markup=False,
        )
    if report.in_use:
        console.print(
            f"kept {report.in_use} image(s) stored again within the hour (parts being judged "
            "again: the next prune looks at them anew)",
            markup=False,
        )
    if report.not_noted:
        console.print(
            f"warning: could not note this prune's cut-off in {settings.images_dir / LAST_PRUNE_FILE} "
            f"({report.not_noted}): the prune is done otherwise; the next prune looks at "
            "these parts again",
            markup=False,
        )


@app.command("inspect")
def inspect_command(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    line: Annotated[
        str,
        typer.Option(
            help=f"Production line; without it, the line {UNNAMED_LINE!r}, which a line of "
            "your own by that name shares."
        ),
    ] = UNNAMED_LINE,
    station: Annotated[
        str,
        typer.Option(help=f"Station (camera) on the line; without it, {UNNAMED_LINE!r}."),
    ] = UNNAMED_LINE,
    model: ModelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    backend: BackendArgument = BackendOption.auto,
    device: DeviceOption = None,
    tile: TileArgument = None,
) -> None:
    """Inspect a few images, store the results and print each part's verdict."""
    import json

    from db.models import INSPECT_COMMAND_SOURCE
    from inspection.batch import BatchInspection, SourceItem, is_zip_archive, read_file
    from inspection.images import not_a_file_reason

    # A path that names no image is the caller's mistake, not a part's: the others are judged
    # and shown, and the exit status says so (an unreadable image is a part's error, recorded).
    # The mistake itself is shown, not recorded: a typo was stored as a part in error, and one
    # with no image at all opened a run on the station. So is a zip, which was recorded as a
    # part "not an image file" at the station.
    mistaken = [p for p in images if not p.is_file() or is_zip_archive(p)]

    def mistake(path: Path) -> str:
        if path.is_dir():
            return "a folder, not an image: `defects batch FOLDER` inspects folders"
        if path.is_file():
            return "a zip, not an image: `defects batch ZIP` inspects a zip's images"
        try:  # (a named pipe or a device is there, and is not read: "not found" misled)
            return not_a_file_reason(path.stat().st_mode) or "file not found"
        except OSError:
            return "file not found"

    if len(mistaken) == len(images):
        raise UserError("; ".join(f"{shown_name(str(p))}: {mistake(p)}" for p in mistaken))
    tile_choice = _tile_choice(tile)
    url = migrated_database_url()
    job = BatchInspection(
        url,
        get_settings().images_dir,
        line,
        station,
        model,
        "",
        INSPECT_COMMAND_SOURCE,
        backend.value,
        device,
        tile=tile_choice,
        one_off=True,
    )
    if (tiling := job.inspector.tiling_note()) is not None:  # (stderr: --json stays parseable)
        typer.echo(tiling, err=True)
    results: list = []  # type: ignore[type-arg]
    items: list[SourceItem] = [
        read_file(p, str(p)) if p not in mistaken else SourceItem(str(p), None, mistake(p))
        for p in images
    ]
    job.run([i for i, p in zip(items, images, strict=True) if p not in mistaken], results.append)
    job.inspector.close()
    if job.summary.rejudged:  # on stderr: --json output stays parseable
        typer.echo(
            f"{job.summary.rejudged} part(s) judged earlier at other thresholds (or in another "
            "--tile grid, or refused for their size at another DEFECTS_MAX_MEGAPIXELS) were "
            f"judged again at {job.summary.model_name}'s current ones, to a pass or a fail "
            "(earlier verdicts kept, superseded; one judged again to an error is among the "
            "errors only)",
            err=True,
        )
    if job.summary.skipped:  # (the dashboard's upload says the same)
        typer.echo(
            f"{job.summary.skipped} part(s) had already been inspected by "
            f"{job.summary.model_name}: their stored verdicts are shown, each counted at the "
            "station that judged it",
            err=True,
        )
    from inspection.verdict import left_out_note

    rows = _stored_verdicts(url, job.model_id, items)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            detail = row["error"] or ", ".join(
                [f"{d['class']} {d['confidence']:.2f}" for d in row["defects"]]
                + ([row["part_classifier"]] if row["part_classifier"] else [])
                + ([left_out_note(row["boxes_left_out"])] if row["boxes_left_out"] else [])
            )
            line = f"{shown_name(row['part'])}: {str(row['verdict']).upper()} {detail}"
            console.print(line, markup=False)
    if mistaken:
        named = ", ".join(shown_name(str(p)) for p in mistaken)
        raise UserError(f"{len(mistaken)} of {len(images)} paths name no image file: {named}")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def shown_name(name: str) -> str:
    """A file's name for a line of output: as given, or as Python's repr writes it (quoted,
    `\\n` for a newline) when it holds a control character, which split a part's line in
    two, or made it look like another part's. `--json` keeps the real name."""
    return repr(name) if _CONTROL.search(name) else name


def _stored_verdicts(url: str, model_id: int, items: list) -> list[dict]:  # type: ignore[type-arg]
    """Each item's verdict as stored (also for parts inspected before), in the order given."""
    from db.queries import part_results
    from inspection.batch import content_key
    from inspection.results import counted_defects, shown_latency
    from inspection.verdict import part_classifier_note

    # (The digest the run computed and kept on each item: its bytes are not hashed again.)
    hashes = [content_key(i) if i.data is not None else None for i in items]
    with session_scope(url) as session:
        stored = part_results(session, [h for h in hashes if h], model_id)
        rows = []
        for item, digest in zip(items, hashes, strict=True):
            inspection = stored.get(digest or "")
            if inspection is None:
                rows.append(
                    {
                        "part": item.name,
                        "verdict": "error",
                        "latency_ms": None,
                        "error": item.error,
                        "defect_probability": None,
                        "part_classifier": None,
                        "defects": [],
                        "boxes_left_out": None,
                    }
                )
                continue
            rows.append(
                {
                    "part": item.name,
                    "verdict": inspection.verdict.value,
                    "latency_ms": shown_latency(inspection.latency_ms),
                    "error": inspection.error,
                    # (A part the part classifier failed was listed with no reason at all.)
                    "defect_probability": inspection.defect_probability,
                    "part_classifier": part_classifier_note(
                        inspection.defect_probability, inspection.thresholds
                    ),
                    "defects": counted_defects(inspection.predictions),
                    # (A part keeps its most confident counted boxes: how many more.)
                    "boxes_left_out": inspection.boxes_left_out,
                }
            )
        return rows


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _ended_by_interrupt(exc: SystemExit) -> bool:
    """Whether typer ended the command for a Ctrl-C (or SIGTERM, raised as one) that the
    command did not handle itself: typer turns it into a bare exit 130, saying nothing, so a
    batch stopped while it loaded its model ended without a word. Not for one the command has
    said itself (`Stopped`): a stopped training's resume hint was followed by "interrupted"."""
    cause = getattr(exc.__context__, "__cause__", None)
    return isinstance(cause, KeyboardInterrupt) and not isinstance(cause, Stopped)


def main() -> None:
    """Entry point: user mistakes print one line and exit non-zero, never a traceback.

    typer's standalone mode already turns usage errors into a message and exit code 2.
    """
    code: int | str | None = 0
    if isinstance(sys.stdout, io.TextIOWrapper):
        # Into a file, a pipe or a service's journal, Python writes stdout in blocks of 8 KB:
        # training's epoch lines reached a log only many epochs late, or at the end.
        sys.stdout.reconfigure(line_buffering=True)
    # A service manager stops a station's watch with SIGTERM: handled as Ctrl-C is (what was
    # judged is written, the run marked finished, "stopped" said), not a silent exit 143 that
    # leaves the run looking killed.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()
    except SystemExit as exc:  # how typer ends every command, done or refused
        code = exc.code
        if _ended_by_interrupt(exc):
            print("interrupted", file=sys.stderr)
    except KeyboardInterrupt as exc:
        if not isinstance(exc, Stopped):
            print("interrupted", file=sys.stderr)
        code = 130
    except (UserError, DatabaseError, NotFoundError, OSError, ValueError) as exc:
        # (OSError: a read-only or full data folder, a path that is a folder, a missing file.)
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        code = 1
    except DBAPIError as exc:
        print("error: " + " ".join(_refused_by_the_database(exc).split()), file=sys.stderr)
        code = 1
    end_process(code)


def _refused_by_the_database(exc: DBAPIError) -> str:
    """A driver's error that no command turned into words (a unique name taken meanwhile, a
    CHECK or a trigger refusing a write): said in one line naming the database, where it was a
    traceback of the driver's error from every command but import. The command's transaction
    was rolled back by `session_scope`."""
    try:
        where = redact(get_settings().resolved_database_url)
    except Exception:  # noqa: BLE001 - the settings read before: only the URL is left out
        where = "the database"
    return (
        f"the database {where} refused this command's write ({type(exc).__name__}: "
        f"{exc.orig}); that write was rolled back"
    )


if __name__ == "__main__":
    main()
