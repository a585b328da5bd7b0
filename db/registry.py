"""Model versions, lines and stations: the small write operations the CLI and the app share."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from db.models import (
    ModelKind,
    ModelStage,
    ModelVersion,
    ProductionLine,
    Station,
    database_utcnow,
)
from db.session import retrying_races, session_scope


class NotFoundError(LookupError):
    """A named thing (model version, line, station) is not in the database."""


def get_model_version(session: Session, ref: str | int) -> ModelVersion:
    """A model version by id or by name."""
    version: ModelVersion | None = None
    if isinstance(ref, int) or str(ref).isdigit():
        version = session.get(ModelVersion, int(ref))
    if version is None:
        version = session.scalars(select(ModelVersion).where(ModelVersion.name == str(ref))).first()
    if version is None:
        raise NotFoundError(f"no model version {ref!r} (see `defects models list`)")
    return version


def named_version(session: Session, name: str) -> ModelVersion:
    """A model version by its name alone, as an operating point names its classifier: by
    `get_model_version`, a name of digits ("2") was taken for an id, another model's."""
    version = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).first()
    if version is None:
        raise NotFoundError(f"no model version {name!r} (see `defects models list`)")
    return version


def production_model(session: Session, kind: ModelKind) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion)
        .where(ModelVersion.kind == kind, ModelVersion.stage == ModelStage.PRODUCTION)
        .order_by(ModelVersion.promoted_at.desc())
    ).first()


def promote(session: Session, version: ModelVersion) -> ModelVersion | None:
    """Make `version` the production model of its kind; the one it replaces is archived.

    Stamped by the database's clock: a rollback puts back the version archived last, and
    promotions made from machines whose clocks disagree put back another one."""
    now = database_utcnow(session)
    previous = production_model(session, version.kind)
    if previous is not None and previous.id != version.id:
        previous.stage = ModelStage.ARCHIVED
        previous.archived_at = now
        # Written first: one production model of a kind is a unique index, and the unit of
        # work would otherwise update the rows in id order.
        session.flush()
    version.stage = ModelStage.PRODUCTION
    version.promoted_at = now
    version.archived_at = None
    session.flush()
    return previous if previous is not None and previous.id != version.id else None


def rollback_target(session: Session, kind: ModelKind) -> ModelVersion | None:
    """The production model the current one replaced: what a rollback would put back."""
    return session.scalars(
        select(ModelVersion)
        .where(
            ModelVersion.kind == kind,
            ModelVersion.stage == ModelStage.ARCHIVED,
            ModelVersion.promoted_at.is_not(None),
        )
        .order_by(ModelVersion.archived_at.desc(), ModelVersion.id.desc())
    ).first()


def rollback(session: Session, kind: ModelKind) -> ModelVersion:
    """Put back the production model that the current one replaced."""
    current = production_model(session, kind)
    earlier = rollback_target(session, kind)
    if earlier is None:
        raise NotFoundError(f"no earlier production {kind.value} to roll back to")
    promote(session, earlier)
    if current is not None:
        current.stage = ModelStage.CANDIDATE
        current.archived_at = None
    session.flush()
    return earlier


NAME_LENGTH = 128  # of the name columns

# The line, and its station, that `defects inspect` records parts at when given no --line or
# --station. A line of one's own by that name (in any case) shares its history with them: its
# --help and the History page say so.
UNNAMED_LINE = "default"


# Characters no one types into a name on purpose and no one sees: line breaks, tabs and other
# controls (a name's line in `defects status` broke in two), zero-width spaces and byte-order
# marks (two lines that read the same), and the bidirectional overrides and isolates that show
# a name's letters in another order than they are stored.
_UNSEEN = re.compile("[\x00-\x1f\x7f-\x9f\u200b\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")


def _same_name(column: ColumnElement[str], *names: str) -> ColumnElement[bool]:
    # (SQLite's lower() folds ASCII letters only: the exact name always matches as well.)
    return or_(
        *(column == name for name in names), *(func.lower(column) == n.lower() for n in names)
    )


def _composed(typed: str) -> str:
    return unicodedata.normalize("NFC", typed.strip())


def _name_as_stored(typed: str, what: str) -> str:
    """`typed` in Unicode's composed form (NFC), refused where empty, too long for its column,
    or holding line breaks, tabs or invisible characters; `what` names it in the message."""
    name = _composed(typed)
    if not name:
        raise ValueError(f"{what} names must not be empty")
    if len(name) > NAME_LENGTH:
        raise ValueError(f"a {what} name has at most {NAME_LENGTH} characters")
    if _UNSEEN.search(name):
        raise ValueError(
            f"a {what} name may not hold line breaks, tabs or invisible characters: {name!r}"
        )
    return name


def station_name_as_stored(typed: str) -> str:
    """A line's or station's name as stored: in Unicode's composed form (NFC), so that "Línea 1"
    typed on a Mac keyboard (decomposed, NFD) is the "Línea 1" another station typed, not a
    second line that reads the same."""
    return _name_as_stored(typed, "line or station")


def class_name_as_stored(typed: str) -> str:
    """A defect class's name as a reviewer gives it, by the rules of line and station names:
    a class becomes a model's output and every chart's label, so two that read the same must
    be one."""
    return _name_as_stored(typed, "class")


def class_key(name: str) -> str:
    """A class name without the differences of case, spacing and '_' or '-'."""
    return re.sub(r"[\s_-]+", "_", name.strip().casefold())


def one_edit_apart(first: str, second: str) -> bool:
    """Whether one letter added, dropped, changed or two swapped turn one name into the other."""
    if abs(len(first) - len(second)) > 1 or first == second:
        return False
    if len(first) == len(second):
        differ = [i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b]
        return len(differ) == 1 or (
            len(differ) == 2
            and differ[1] == differ[0] + 1
            and first[differ[0]] == second[differ[1]]
            and first[differ[1]] == second[differ[0]]
        )
    shorter, longer = sorted((first, second), key=len)
    return any(longer[:i] + longer[i + 1 :] == shorter for i in range(len(longer)))


def _plurals(key: str) -> set[str]:
    """An English noun's plurals ('scratch' 'scratches', 'cavity' 'cavities', 'spot' 'spots'):
    a reviewer names the one defect in front of them, while a dataset's classes are often
    plural, as NEU-DET's 'scratches'."""
    plurals = {key + "s", key + "es"}
    if key.endswith("y"):
        plurals.add(key[:-1] + "ies")
    return plurals


def singular_or_plural(first: str, second: str) -> bool:
    """Whether one class name is the other's plural ('Scratch', 'scratches'), names of three
    letters or more: said as such where a look-alike is warned about, not as a misspelling."""
    first_key, second_key = class_key(first), class_key(second)
    return min(len(first_key), len(second_key)) >= 3 and (
        first_key in _plurals(second_key) or second_key in _plurals(first_key)
    )


def look_alike_classes(first: str, second: str) -> bool:
    """Two class names that read as one class spelled two ways: equal but for case, spacing
    and '_' or '-' ('Scratch', 'scratch'), singular and plural ('Scratch', 'scratches'), or a
    typo, one edit apart in names of four letters or more ('spot', 'spott'), but not numbered
    variants ('dent_1', 'dent_2')."""
    first_key, second_key = class_key(first), class_key(second)
    return (first_key == second_key or singular_or_plural(first, second)) or (
        min(len(first_key), len(second_key)) >= 4
        and one_edit_apart(first_key, second_key)
        and re.sub(r"\d", "", first_key) != re.sub(r"\d", "", second_key)
    )


def ensure_station(session: Session, line_name: str, station_name: str) -> Station:
    """The station of a line, creating either when new: lines are named by the people who run
    them. A name is checked (`station_name_as_stored`) only where a line or station is made:
    one stored before the check, a tab in it say, still names its station (refused, that
    station's watch could not start again)."""
    typed_line, typed_station = line_name.strip(), station_name.strip()
    composed_line, composed_station = _composed(line_name), _composed(station_name)
    if not composed_line or not composed_station:
        raise ValueError("line and station names must not be empty")
    # Matched whatever the case: "line 2" typed at a station is the "Line 2" already there,
    # not a second line that splits its history in two.
    line = session.scalars(
        select(ProductionLine)
        # (A name stored before names were composed is found as it was typed.)
        .where(_same_name(ProductionLine.name, composed_line, typed_line))
        .order_by(ProductionLine.name != composed_line)  # the exact name first, where both exist
    ).first()
    if line is None:
        line = ProductionLine(name=station_name_as_stored(line_name))
        session.add(line)
        session.flush()
    station = session.scalars(
        select(Station)
        .where(
            Station.line_id == line.id, _same_name(Station.name, composed_station, typed_station)
        )
        .order_by(Station.name != composed_station)
    ).first()
    if station is None:
        station = Station(line_id=line.id, name=station_name_as_stored(station_name))
        session.add(station)
        session.flush()
    return station


@dataclass(frozen=True)
class Promotion:
    name: str
    kind: ModelKind
    replaced: str | None
    # Already the production model: nothing changed (no new promotion stamped).
    already: bool = False


def promote_version(url: str, ref: str | int) -> Promotion:
    """Promote in a transaction of its own, again if another promotion of the same kind won
    the race (the unique index of production models refused this one): this one then
    replaces that one, as if they had come one after the other."""

    def attempt() -> Promotion:
        with session_scope(url) as session:
            version = get_model_version(session, ref)
            if version.kind == ModelKind.CLASSIFIER:
                # Stations judge with the classifier their detector's operating point names,
                # not with a "production classifier": promoted, it would change nothing.
                raise ValueError(
                    f"{version.name} is a classifier: stations use the classifier that the "
                    "production detector's operating point names; calibrate the detector with "
                    f"--classifier {version.name} (or on the Settings page) to put it to work"
                )
            if version.stage == ModelStage.PRODUCTION:
                # (Stamped again, the model timeline showed a promotion that did not happen.)
                return Promotion(version.name, version.kind, None, already=True)
            previous = promote(session, version)
            return Promotion(version.name, version.kind, previous.name if previous else None)

    return retrying_races(attempt)


def roll_back(url: str, kind: ModelKind, replacing: str | None = None) -> str:
    """`rollback` in a transaction of its own, again after a race; the name restored.

    `replacing`: the production model the caller saw; refused where another is in production
    now. A second click (or a second user) rolled back one version more: two versions down."""

    def attempt() -> str:
        with session_scope(url) as session:
            if replacing is not None:
                current = production_model(session, kind)
                if current is None or current.name != replacing:
                    now = current.name if current else "no model"
                    raise ValueError(
                        f"{now} is the production {kind.value} now, not {replacing}: "
                        "nothing rolled back"
                    )
            return rollback(session, kind).name

    return retrying_races(attempt)


def classifier_in_use(session: Session, classifier: ModelVersion) -> list[str]:
    """The detectors whose operating point names this classifier, each archived one said as
    such: archiving it would leave their stations judging with an archived model. An archived
    detector counts too, since a rollback (or a promotion) puts it back to work with the
    operating point it had: left out, the classifier was archived once its detector was
    replaced, and the rollback brought both back, the archived classifier judging every part."""
    detectors = session.scalars(
        select(ModelVersion)
        .where(ModelVersion.kind == ModelKind.DETECTOR)
        .order_by(ModelVersion.id)
    ).all()
    return [
        d.name
        + (
            " (archived: a rollback or promotion puts it back)"
            if d.stage == ModelStage.ARCHIVED
            else ""
        )
        for d in detectors
        if ((d.thresholds or {}).get("classifier") or {}).get("version") == classifier.name
    ]
