"""The `defects` command line.

It lives in `training` because that is the one package allowed to import both `inspection` and
`db`, which every sub-command needs.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import inspection  # noqa: F401 - prepares torch/torchvision/ultralytics before anything else
from db.migrate import current_revision, head_revision, upgrade
from db.models import ModelKind, ModelStage, ModelVersion
from db.registry import NotFoundError, get_model_version, rollback
from db.registry import promote as promote_version
from db.session import DatabaseError, redact, session_scope
from inspection.errors import UserError
from inspection.settings import get_settings

app = typer.Typer(
    help="Surface-defect inspection: import data, train, evaluate, export, inspect, track.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="The inspection database.", no_args_is_help=True)
models_app = typer.Typer(help="Model versions: list, promote, roll back.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
console = Console()


def database_url() -> str:
    return get_settings().resolved_database_url


def migrated_database_url() -> str:
    """The database URL, after bringing its schema up to date (every command migrates on start)."""
    url = database_url()
    upgrade(url)
    return url


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to the latest revision."""
    url = database_url()
    revision = upgrade(url)
    console.print(f"database {redact(url)} at revision {revision}")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision of the database and the latest one."""
    url = database_url()
    console.print(f"database {redact(url)}: {current_revision(url)} (latest {head_revision()})")


@models_app.command("list")
def models_list(
    kind: Annotated[ModelKind | None, typer.Option(help="Only this kind.")] = None,
) -> None:
    """Model versions, newest first, with their stage and key metrics."""
    from sqlalchemy import select

    with session_scope(migrated_database_url()) as session:
        query = select(ModelVersion).order_by(ModelVersion.created_at.desc())
        if kind is not None:
            query = query.where(ModelVersion.kind == kind)
        versions = session.scalars(query).all()
        if not versions:
            console.print("no model versions yet: train one with `defects train detector`")
            return
        table = Table(
            "id", "name", "kind", "architecture", "stage", "mAP50", "miss rate", "created"
        )
        for v in versions:
            metrics = v.metrics or {}
            table.add_row(
                str(v.id),
                v.name,
                v.kind.value,
                v.architecture,
                v.stage.value,
                _fmt(metrics.get("map50")),
                _fmt(metrics.get("miss_rate")),
                v.created_at.strftime("%Y-%m-%d %H:%M"),
            )
        console.print(table)


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


@models_app.command("promote")
def models_promote(model: Annotated[str, typer.Argument(help="Model version id or name.")]) -> None:
    """Make a model version the production model of its kind (the current one is archived)."""
    with session_scope(migrated_database_url()) as session:
        version = get_model_version(session, model)
        previous = promote_version(session, version)
        replaced = f", replacing {previous.name}" if previous else ""
        console.print(f"{version.name} is now the production {version.kind.value}{replaced}")


@models_app.command("rollback")
def models_rollback(
    kind: Annotated[ModelKind, typer.Option(help="Which kind of model.")] = ModelKind.DETECTOR,
) -> None:
    """Put back the production model that the current one replaced."""
    with session_scope(migrated_database_url()) as session:
        restored = rollback(session, kind)
        console.print(f"{restored.name} is the production {kind.value} again")


@models_app.command("archive")
def models_archive(model: Annotated[str, typer.Argument(help="Model version id or name.")]) -> None:
    """Retire a model version."""
    from db.models import utcnow

    with session_scope(migrated_database_url()) as session:
        version = get_model_version(session, model)
        version.stage = ModelStage.ARCHIVED
        version.archived_at = utcnow()
        console.print(f"{version.name} archived")


def main() -> None:
    """Entry point: user mistakes print one line and exit non-zero, never a traceback.

    typer's standalone mode already turns usage errors into a message and exit code 2.
    """
    try:
        app()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (UserError, DatabaseError, NotFoundError, FileNotFoundError, ValueError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        sys.exit(1)
