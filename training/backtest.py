"""Backtest a model version on every reviewed part, and turn reviews into a training dataset.

Reviews are the product's ground truth: before a candidate replaces the production model, QA can
see the miss and false-call rates it would have had on the parts people have already judged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import (
    Dataset,
    Inspection,
    ModelKind,
    ModelVersion,
    Part,
    Review,
    ReviewKind,
    Verdict,
)
from db.registry import get_model_version, named_version, production_model
from db.reviews import REVIEW_EXPORT, PartTruth, reviewed_parts, reviewer_classes
from db.session import session_scope
from inspection.engine import Inspector, PartInput, TileChoice, checkpoint_tile
from inspection.errors import UserError
from inspection.images import located_image
from inspection.tiling import (
    TileSpec,
    TileSpecError,
    needs_tiling,
    tile_of_metadata,
    tile_option,
)
from training.datasets import (
    Box,
    ImportIssue,
    ImportReport,
    LabeledImage,
    fill_splits,
    located_dataset,
    split_image_paths,
    tile_origins,
    write_dataset,
)
from training.evaluate import PartRates, part_rates
from training.versions import BASE_NOTE, weights_file


@dataclass(frozen=True)
class Backtest:
    model_name: str
    rates: PartRates
    parts: int
    unreadable: int
    # Reviewed parts left out as the model learned them (train or val of its data), by id.
    learned_parts: frozenset[int] = field(default_factory=frozenset)
    learned_from: list[str] = field(default_factory=list)  # the datasets they are in

    @property
    def learned(self) -> int:
        return len(self.learned_parts)


def _learned_images(session: Session, version: ModelVersion) -> dict[str, set[str]]:
    """The stems of the images in the train and val splits of the datasets `version` learned
    from (its own, and those of the versions it was fine-tuned from), by dataset. An export of reviews names each image by its part's content hash, as the image
    store does, so a reviewed part it holds is known by that stem. (A dataset imported from
    files keeps their own names, and is not matched.)"""
    learned: dict[str, set[str]] = {}
    seen: set[int] = set()
    current: ModelVersion | None = version
    while current is not None and current.id not in seen:
        seen.add(current.id)
        dataset = current.dataset
        if dataset is not None and dataset.name not in learned:
            root = located_dataset(dataset.root_path)
            stems = learned.setdefault(dataset.name, set())
            try:
                origins = tile_origins(root)
                for split in ("train", "val"):
                    images = split_image_paths(root, split)
                    if origins is None:
                        stems.update(image.stem for image in images)
                    else:
                        stems.update(
                            Path(origins[i.name].part).stem for i in images if i.name in origins
                        )
            except UserError:
                pass  # (its files gone: nothing of it to leave out here)
        base = BASE_NOTE.search(current.notes or "")
        current = (
            session.scalars(select(ModelVersion).where(ModelVersion.name == base[1])).first()
            if base
            else None
        )
    return learned


def backtest(url: str, model: str) -> Backtest:
    """The verdicts `model` gives the reviewed parts, scored against the reviews.

    The parts it learned from (the train and val splits of an export of these reviews it, or
    a version it was fine-tuned from, was trained on) are left out: scored on them, a
    retrained candidate looked better than the production model whose recorded verdicts it
    is set beside. Give `recorded_rates` the same `learned_parts`."""
    with session_scope(url) as session:
        version = get_model_version(session, model)
        if version.kind != ModelKind.DETECTOR:
            raise UserError("backtests run on detectors")
        every = reviewed_parts(session)
        by_dataset = _learned_images(session, version)
        stem = {t.part_id: Path(t.stored_path).stem for t in every}
        learned_from = [n for n, stems in by_dataset.items() if stems & set(stem.values())]
        learned = frozenset(
            p for p, s in stem.items() if any(s in stems for stems in by_dataset.values())
        )
        truths = [t for t in every if t.part_id not in learned]
        weights, thresholds, name = weights_file(version), dict(version.thresholds), version.name
        classifier_name = (thresholds.get("classifier") or {}).get("version")
        # (By its name alone, as stations look it up: a name of digits is not an id.)
        classifier = (
            weights_file(named_version(session, classifier_name)) if classifier_name else None
        )
    if not every:
        raise UserError("no reviewed parts yet: review some parts first")
    if not truths:
        raise UserError(
            f"every reviewed part is in the train or val split of {', '.join(learned_from)}, "
            f"which {name} learned from: scored on them it would look better than it is; "
            "review more parts, or compare on a test split (`defects evaluate`)"
        )
    located = {t.part_id: located_image(t.stored_path) for t in truths}
    readable = [t for t in truths if t.stored_path and located[t.part_id].is_file()]
    inspector = Inspector.from_weights(weights, thresholds, classifier_weights=classifier)
    try:
        results = list(
            inspector.inspect(
                PartInput(str(t.part_id), located[t.part_id].read_bytes()) for t in readable
            )
        )
    finally:
        inspector.close()
    outcomes = [
        (t.defective, r.verdict == "fail")
        for t, r in zip(readable, results, strict=True)
        if r.verdict != "error"
    ]
    return Backtest(
        name,
        part_rates(outcomes),
        len(outcomes),
        len(truths) - len(outcomes),
        learned,
        learned_from if learned else [],
    )


def recorded_rates(
    session: Session,
    model: ModelVersion | None = None,
    leaving_out: frozenset[int] = frozenset(),
) -> PartRates:
    """The rates the recorded verdicts (of the production model by default) had on reviewed
    parts, but those `leaving_out` (a backtest's `learned_parts`: the same parts as it)."""
    model = model or production_model(session, ModelKind.DETECTOR)
    truth = {
        t.part_id: t.defective for t in reviewed_parts(session) if t.part_id not in leaving_out
    }
    query = select(Inspection.part_id, Inspection.verdict).where(
        Inspection.part_id.in_(list(truth)),
        Inspection.verdict != Verdict.ERROR,
        Inspection.is_current(),
    )
    if model is not None:
        query = query.where(Inspection.model_version_id == model.id)
    return part_rates([(truth[p], v == Verdict.FAIL) for p, v in session.execute(query)])


def unused_dataset_name(session: Session, stem: str = "reviews") -> str:
    """`stem`, or the first of stem-2, stem-3, ... no dataset has: the Review page offers it,
    where a fixed "reviews" made every export after the first one fail."""
    taken = set(session.scalars(select(Dataset.name).where(Dataset.name.startswith(stem))))
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    return name


def _unlabeled_before(
    session: Session, new_classes: list[str], exported: list[PartTruth]
) -> list[ImportIssue]:
    """A caveat per new class: the exported parts whose reviews all came before its first
    defect was added could not have been labeled with it (a part marked good then may hold
    one). Said, with the counts, rather than guessed: the dataset teaches them as they were
    reviewed. A class no reviewer added as missed (its defects all confirmed detections, of a
    detector that knew it, since replaced) has none: reviewers could pick it then."""
    if not new_classes or not exported:
        return []
    first_added = dict(
        session.execute(
            select(Review.class_name, func.min(Review.created_at))
            .where(Review.kind == ReviewKind.MISSED_DEFECT, Review.class_name.in_(new_classes))
            .group_by(Review.class_name)
        ).all()
    )
    ids = [truth.part_id for truth in exported]
    last_reviewed = dict(
        session.execute(
            select(Review.part_id, func.max(Review.created_at))
            .where(Review.part_id.in_(ids))
            .group_by(Review.part_id)
        ).all()
    )
    caveats = []
    for class_name in new_classes:
        since = first_added.get(class_name)
        if since is None:
            continue
        before = [t for t in exported if last_reviewed[t.part_id] < since]
        if not before:
            continue
        good = sum(1 for t in before if not t.defective)
        caveats.append(
            ImportIssue(
                f"new class {class_name}",
                f"{len(before)} of the {len(exported)} parts exported "
                f"{'was' if len(before) == 1 else 'were'} reviewed before the first "
                f"{class_name} was added ({since:%Y-%m-%d %H:%M} UTC; {good} of them marked "
                f"good): they cannot have been labeled with it, so a {class_name} on them is "
                "taught as no defect; review them again where it may be",
                left_out=False,
                caveat=True,
            )
        )
    return caveats


def _production_tile(session: Session) -> tuple[TileSpec | None, list[ImportIssue]]:
    """The grid of the production detector (the one whose classes an export takes): an export
    for a tiled model is cut by its grid, so that the model retrained on it stays tiled. Where
    its weights are not on this machine, the parts are exported whole, and that is said."""
    detector = production_model(session, ModelKind.DETECTOR)
    if detector is None:
        return None, []
    try:
        weights = weights_file(detector)
        if weights.suffix == ".onnx":
            from training.export import read_metadata

            return tile_of_metadata(read_metadata(weights)), []
        return checkpoint_tile(weights), []  # (read once per file, as the stations read it)
    except (UserError, OSError, ValueError, RuntimeError) as exc:
        return None, [
            ImportIssue(
                detector.name,
                f"its weights cannot be read here ({exc}): whether it judges parts by tiles is "
                "unknown, so the parts are exported whole",
                left_out=False,
                caveat=True,
            )
        ]


def _stations_grids(
    session: Session, exported: list[PartTruth], cut_by: TileSpec | None
) -> list[ImportIssue]:
    """A caveat where stations judged exported parts in another grid (`--tile`) than the one
    the export is cut by: a plant that judges line-scan strips in tiles with an untiled
    model got whole strips, and a model retrained on them learnt its defects shrunk, not as
    those stations judge them."""
    ids = [t.part_id for t in exported]
    points = session.execute(
        select(Inspection.part_id, Inspection.thresholds, Part.width, Part.height)
        .join(Part, Part.id == Inspection.part_id)
        .where(Inspection.part_id.in_(ids), Inspection.is_current())
        .order_by(Inspection.inspected_at)
    ).all()
    latest = {row[0]: row[1:] for row in points}  # (the last current verdict)
    grids: dict[TileSpec | None, int] = {}
    for point, width, height in latest.values():
        recorded = point.get("tile") if isinstance(point, dict) else None
        if recorded is None:
            continue  # judged in its model's own grid
        try:
            grid = None if recorded == "off" else TileSpec.from_json(recorded)
        except TileSpecError:
            continue
        either = (needs_tiling(width or 0, height or 0, g) for g in (grid, cut_by))
        if grid != cut_by and any(either):  # (a part no larger than a tile is whole in both)
            grids[grid] = grids.get(grid, 0) + 1
    cut = f"is cut in {cut_by.describe()}" if cut_by is not None else "keeps every part whole"
    issues = []
    for grid, count in grids.items():
        judged = f"in {grid.describe()}" if grid is not None else "whole (--tile off)"
        option = tile_option(grid)
        issues.append(
            ImportIssue(
                "stations' grid",
                f"{count} of the {len(exported)} reviewed parts to export were judged by "
                f"stations {judged}, but the export {cut}: a model retrained on it learns them "
                f"as cut here, not as those stations judge them; export again with --tile "
                f"{option} (on the Review page, Tiles {option}) to match them",
                left_out=False,
                caveat=True,
            )
        )
    return issues


def export_reviews(
    session: Session,
    name: str,
    class_names: list[str],
    datasets_dir: Path,
    tile: TileChoice = "model",
) -> ImportReport:
    """Reviewed parts as a labeled dataset (YOLO layout), registered for retraining.

    Cut by the production detector's grid, or by `tile` (SIZE[:OVERLAP] or off) where given:
    the grid the stations judge in, where they run with `--tile`.

    Its classes are `class_names` (the production detector's) in their order, followed by the
    new defect types reviewers added, and the classes of confirmed detections it does not
    know (`reviewer_classes`), that an exported part holds, so that
    the detector can be fine-tuned onto them (`train detector --from`): a part with a new class's defect was left
    out, and the new type never reached a model."""
    if session.scalars(select(Dataset).where(Dataset.name == name)).first() is not None:
        raise UserError(f"a dataset named {name!r} already exists: export under another name")
    known = list(class_names)
    new_classes = reviewer_classes(session, known)
    issues: list[ImportIssue] = []
    kept: list[tuple[Path, PartTruth]] = []
    for truth in reviewed_parts(session):
        if not truth.complete:
            # (Its undecided detections would be background in the labels: taught as no defect.)
            issues.append(
                ImportIssue(
                    f"part {truth.part_id}", "left out: some of its detections are not decided yet"
                )
            )
            continue
        path = located_image(truth.stored_path) if truth.stored_path else None
        if path is None or not path.is_file():
            issues.append(ImportIssue(f"part {truth.part_id}", "its image file is missing"))
            continue
        other = next((b[0] for b in truth.boxes if b[0] not in (*known, *new_classes)), None)
        if other is not None:
            issues.append(
                ImportIssue(path.name, f"class {other} is not one of {[*known, *new_classes]}")
            )
            continue
        if truth.defective and not truth.boxes:
            issues.append(ImportIssue(path.name, "reviewed as defective but no defect has a box"))
            continue
        kept.append((path, truth))
    if not kept:
        left_out = f"; {len(issues)} left out, e.g. {issues[0]}" if issues else ""
        raise UserError(
            "no reviewed part to export: a part is exported once each of its detections is "
            f"decided or it is marked good (Review page){left_out}"
        )
    # A new class is one of the dataset's only where an exported part holds one of its
    # defects: one whose defects are all on parts left out grew the fine-tuned detector by a
    # class it never saw.
    boxed = {b[0] for _, truth in kept for b in truth.boxes}
    unseen = [c for c in new_classes if c not in boxed]
    new_classes = [c for c in new_classes if c in boxed]
    class_names = [*known, *new_classes]
    images = [
        LabeledImage(
            path,
            0,
            0,
            [Box(class_names.index(c), x1, y1, x2, y2) for c, x1, y1, x2, y2 in truth.boxes],
            # (Drawn on the part as stations decoded it, turned by any EXIF orientation.)
            boxes_as_judged=True,
            # (Its file is named by content hash: parts.csv and tiles.csv keep the camera's.)
            part_id=truth.part_id,
            original_name=truth.original_name,
        )
        for path, truth in kept
    ]
    exported = [truth for _, truth in kept]
    issues[:0] = [
        ImportIssue(
            f"new class {class_name}",
            "none of its defects is on a part exported (their parts are left out): not a "
            "class of this dataset",
            left_out=False,
            caveat=True,
        )
        for class_name in unseen
    ] + _unlabeled_before(session, new_classes, exported)
    if tile == "model":
        cut_by, unknown = _production_tile(session)
        issues[:0] = unknown
    else:
        cut_by = None if tile == "off" else tile
    issues[:0] = _stations_grids(session, exported, cut_by)
    # Split so that a few dozen reviewed parts can be retrained on: val and train each get a
    # defect (and val a good part where there is one).
    return write_dataset(
        session,
        name,
        "reviews",
        REVIEW_EXPORT,
        class_names,
        images,
        issues,
        datasets_dir,
        fill_splits(images),
        tile=cut_by,
    )
