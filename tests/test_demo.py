"""The demo model: registered once, production only where there is none; the shipped files agree."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from db.models import ModelKind
from db.registry import production_model
from inspection.engine import Inspector, PartInput
from tests.conftest import Trained
from tests.synthetic import CLASSES, make_images
from training.demo import DEMO_DIR, install_demo


def test_install_demo_is_idempotent_and_respects_production(
    session, trained: Trained, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    demo = tmp_path / "demo"
    demo.mkdir()
    shutil.copy(trained.weights, demo / "weights.pt")
    (demo / "model.json").write_text(
        json.dumps(
            {
                "name": "demo-v1",
                "architecture": "defect-yolo-n",
                "classes": CLASSES,
                "imgsz": 64,
                "thresholds": {"per_class": {"scratch": 0.3, "spot": 0.3}, "iou": 0.45},
            }
        )
    )
    first = install_demo(session, tmp_path / "models", demo)
    assert first.promoted and production_model(session, ModelKind.DETECTOR).name == "demo-v1"
    second = install_demo(session, tmp_path / "models", demo)
    assert second.version_name == "demo-v1" and not second.promoted
    assert second.message == "demo model demo-v1 is registered already; production unchanged"
    assert install_demo(session, tmp_path / "models", tmp_path / "none").version_name is None


@pytest.mark.skipif(not (DEMO_DIR / "weights.pt").exists(), reason="no demo model shipped yet")
def test_install_demo_on_a_full_disk_registers_nothing_and_leaves_no_half_file(
    session, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A disk that filled while the demo's weights or its .onnx were copied stopped
    `models install-demo` with the system's bare "[Errno 28]" and left the half file in the
    models folder (the .onnx's under a new name at every try). Nothing is registered, no half
    file stays, and the error says so in one line; with space, it installs. (The full disk is
    simulated: a copy that writes a few bytes and raises ENOSPC.)"""
    import errno

    from sqlalchemy import select

    from db.models import ModelVersion
    from inspection.errors import UserError

    demo = tmp_path / "demo"
    demo.mkdir()
    shutil.copy(trained.weights, demo / "weights.pt")
    (demo / "weights.onnx").write_bytes(b"an export" * 100)
    (demo / "model.json").write_text(
        json.dumps(
            {"name": "demo-v1", "architecture": "defect-yolo-n", "classes": CLASSES, "imgsz": 64}
        )
    )
    models = tmp_path / "models"
    copyfile = shutil.copyfile
    for failing in ("weights.pt", "weights.onnx"):

        def filling(
            source: Path, target: Path, failing: str = failing, **options: object
        ) -> object:
            if Path(source).name != failing:
                return copyfile(source, target, **options)
            Path(target).write_bytes(Path(source).read_bytes()[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(shutil, "copyfile", filling)  # (shutil.copy2's too)
        with pytest.raises(UserError, match=rf"cannot copy the .*{failing}.* No space left"):
            install_demo(session, models, demo)
        session.rollback()  # (as the command's session does)
        monkeypatch.setattr(shutil, "copyfile", copyfile)
        assert session.scalars(select(ModelVersion)).first() is None
        # (The weights copied before the .onnx failed were left, a folder no version names:
        # the rollback of their registration removes it.)
        assert list(models.rglob("*")) == []
    assert install_demo(session, models, demo).promoted
    assert sorted(p.name for p in models.rglob("*") if p.is_file()) == [
        "weights.onnx",
        "weights.pt",
    ]


def test_shipped_onnx_gives_the_same_detections_as_the_weights(tmp_path: Path) -> None:
    meta = json.loads((DEMO_DIR / "model.json").read_text())
    thresholds = meta["thresholds"]
    torch_inspector = Inspector.from_weights(DEMO_DIR / "weights.pt", thresholds, "pytorch", "cpu")
    onnx_inspector = Inspector.from_weights(DEMO_DIR / "weights.onnx", thresholds, "onnx", "cpu")
    images = make_images(tmp_path / "imgs", n=4, size=200, seed=3)
    parts = [PartInput(i.name, (tmp_path / "imgs" / i.name).read_bytes()) for i in images]
    for a, b in zip(torch_inspector.inspect(parts), onnx_inspector.inspect(parts), strict=True):
        assert a.verdict == b.verdict
        assert len(a.detections) == len(b.detections)
        for x, y in zip(a.detections, b.detections, strict=True):
            assert x.class_name == y.class_name
            # Tight enough that float16-rounded weights (export --compact) fail it; the shipped
            # float32 file moves nothing.
            assert abs(x.confidence - y.confidence) < 1e-4
            assert np.allclose([x.x1, x.y1, x.x2, x.y2], [y.x1, y.y1, y.x2, y.y2], atol=0.01)


def test_shipped_onnx_records_the_weights_it_was_exported_from() -> None:
    """An export without the weights' digest cannot be told from a stale one: a CPU station
    running the demo said, at every run, that its export was unchecked."""
    from inspection.engine import EXPORTED_FROM_KEY, sha256_of
    from training.export import read_metadata

    recorded = read_metadata(DEMO_DIR / "weights.onnx")
    assert recorded.get(EXPORTED_FROM_KEY) == sha256_of(DEMO_DIR / "weights.pt")
    assert (
        recorded["defects.model_version"]
        == json.loads((DEMO_DIR / "model.json").read_text())["name"]
    )


def test_shipped_files_carry_no_path_of_the_machine_that_trained_them() -> None:
    """ultralytics records absolute paths (data file, run folder) in what it saves; the shipped
    model must not tell users where it was built."""
    import re

    for name in ("weights.pt", "weights.onnx", "model.json", "MODEL_CARD.md"):
        blob = (DEMO_DIR / name).read_bytes()
        found = re.findall(
            rb"(?:/tmp/|/home/|/root/|/work/|/Users/|[A-Z]:\\\\)[\x21-\x7e]{0,60}", blob
        )
        assert not found, f"{name} holds machine paths such as {found[:3]}"


def test_a_newer_demo_replaces_an_earlier_demo_in_production_not_a_users_model(
    session, trained: Trained, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A pull that brings a better demo left every existing install on the older one."""
    from db.registry import promote
    from training.versions import register_model_version

    def shipped(name: str, extra: bytes) -> Path:
        demo = tmp_path / name
        demo.mkdir()
        (demo / "weights.pt").write_bytes(trained.weights.read_bytes() + extra)
        (demo / "model.json").write_text(
            json.dumps(
                {"name": name, "architecture": "defect-yolo-n", "classes": CLASSES, "imgsz": 64}
            )
        )
        return demo

    install_demo(session, tmp_path / "models", shipped("demo-v1", b""))
    newer = install_demo(session, tmp_path / "models", shipped("demo-v2", b"\0"))
    assert newer.promoted and "replaces the earlier demo demo-v1" in newer.message
    assert production_model(session, ModelKind.DETECTOR).name == "demo-v2"
    own = register_model_version(
        session,
        trained.weights,
        tmp_path / "models",
        kind=ModelKind.DETECTOR,
        architecture="defect-yolo-n",
        class_names=CLASSES,
        image_size=64,
        name="ours",
    )
    promote(session, own)
    newest = install_demo(session, tmp_path / "models", shipped("demo-v3", b"\0\0"))
    assert not newest.promoted and production_model(session, ModelKind.DETECTOR).name == "ours"


def _figures(value: object) -> set[str]:
    """Every number of a results file, as the card may print it."""
    if isinstance(value, dict):
        return set().union(*(_figures(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_figures(v) for v in value))
    if isinstance(value, bool) or not isinstance(value, int | float):
        return set()
    shown = {str(value), *(f"{value:.{digits}f}" for digits in range(1, 5))}
    return shown | ({str(int(value))} if float(value).is_integer() else set())


@pytest.mark.skipif(not (DEMO_DIR / "MODEL_CARD.md").exists(), reason="no demo model shipped yet")
def test_every_figure_of_the_model_card_is_in_a_results_file() -> None:
    """The card's test and calibration figures (misses, recall at threshold, the threshold, the
    upper bound) were only in model.json, written by the packaging: no results file held them."""
    import re

    results = DEMO_DIR.parents[1] / "bench" / "results"
    held: set[str] = set()
    for name in (
        "package_demo.json",
        "finetune_demo.json",
        "finetune_demo_gpu_feature.json",
        "finetune_demo_gpu_none.json",
    ):
        assert (results / name).is_file(), f"bench/results/{name} is missing"
        held |= _figures(json.loads((results / name).read_text()))
    card = (DEMO_DIR / "MODEL_CARD.md").read_text()
    # Decimals, "N of M" counts and seconds: the card's measured figures (a dataset's sizes and
    # a schedule's epochs are facts of the set-up, not measurements).
    figures = re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", card)
    for count, total in re.findall(r"(\d+) of\s+(\d+)", card):
        figures += [count, total]
    figures += re.findall(r"(\d+) s\b", card)
    assert len(figures) > 20  # (the card's table and its text, not an empty match)
    missing = sorted({figure for figure in figures if figure not in held})
    assert not missing, f"figures of MODEL_CARD.md in no results file: {missing}"


def _demo(tmp_path: Path, trained: Trained, name: str, extra: bytes) -> Path:
    """A shipped demo's folder, calibrated as the shipped demos are (on the demo data's val)."""
    demo = tmp_path / name
    demo.mkdir()
    (demo / "weights.pt").write_bytes(trained.weights.read_bytes() + extra)
    calibration = {"data": "neu-det", "split": "val", "max_miss_rate": 0.0}
    thresholds = {"per_class": dict.fromkeys(CLASSES, 0.2), "calibration": calibration}
    card = {"name": name, "architecture": "defect-yolo-n", "classes": CLASSES, "imgsz": 64}
    (demo / "model.json").write_text(json.dumps({**card, "thresholds": thresholds}))
    return demo


def test_a_rollback_to_the_earlier_demo_stays_at_the_next_start(
    session, trained: Trained, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """`make run` installs the demo at every start: the newer demo was promoted again over the
    earlier one a user had rolled back to, as its message told them they could."""
    from db.registry import get_model_version, promote

    install_demo(session, tmp_path / "models", _demo(tmp_path, trained, "demo-v1", b""))
    newer = _demo(tmp_path, trained, "demo-v2", b"\0")
    assert install_demo(session, tmp_path / "models", newer).promoted
    promote(session, get_model_version(session, "demo-v1"))  # what a rollback does
    again = install_demo(session, tmp_path / "models", newer)
    assert not again.promoted and production_model(session, ModelKind.DETECTOR).name == "demo-v1"


@pytest.mark.parametrize(
    ("operating_point", "said"),
    [
        (
            {"calibration": {"data": "my-parts", "split": "val", "max_miss_rate": 0.0}},
            "calibrated on my-parts/val for a miss rate of at most 0.0",
        ),
        (
            {"calibration": {"data": "neu-det", "split": "val", "max_miss_rate": 0.01}},
            "calibrated on neu-det/val for a miss rate of at most 0.01",
        ),
        ({}, "thresholds set by hand"),
    ],
    ids=["calibrated on own parts", "calibrated on NEU-DET at another target", "set by hand"],
)
def test_an_earlier_demo_at_the_users_operating_point_stays_in_production(
    session, trained: Trained, tmp_path: Path, operating_point: dict, said: str
) -> None:  # type: ignore[no-untyped-def]
    """A user who calibrated the demo on their own parts lost that operating point at the next
    `make run`: the newer demo replaced it at the thresholds it ships with."""
    install_demo(session, tmp_path / "models", _demo(tmp_path, trained, "demo-v1", b""))
    current = production_model(session, ModelKind.DETECTOR)
    mine = {"per_class": dict.fromkeys(CLASSES, 0.05), **operating_point}
    current.thresholds = mine
    newer = install_demo(session, tmp_path / "models", _demo(tmp_path, trained, "demo-v2", b"\0"))
    assert not newer.promoted and newer.version_name == "demo-v2"
    assert f"production stays demo-v1 at the operating point you gave it ({said})" in (
        newer.message
    )
    kept = production_model(session, ModelKind.DETECTOR)
    assert kept.name == "demo-v1" and kept.thresholds == mine


@pytest.mark.skipif(not (DEMO_DIR / "weights.pt").exists(), reason="no demo model shipped yet")
def test_second_machine_with_its_own_data_folder_judges_with_the_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stations sharing one database with data folders at their own paths: the demo version
    named the first machine's weights, so on the second `install-demo` stopped with "[Errno 2]"
    (it wrote the ONNX beside the first machine's file) and every inspection with "the weights
    are missing". Now install-demo puts the shipped file, the version's exact bytes, in this
    machine's store, where the version's weights are looked for; other bytes there are not
    taken for the version's."""
    from typer.testing import CliRunner

    from db.session import session_scope
    from inspection.errors import UserError
    from inspection.settings import get_settings
    from training.cli import app
    from training.versions import weights_file

    runner = CliRunner()
    monkeypatch.setenv("DEFECTS_DATABASE_URL", f"sqlite:///{tmp_path / 'shared.db'}")

    def machine(name: str) -> None:
        monkeypatch.setenv("DEFECTS_DATA_DIR", str(tmp_path / name))
        get_settings.cache_clear()

    machine("machine1")
    assert runner.invoke(app, ["models", "install-demo"]).exit_code == 0
    (tmp_path / "machine1").rename(tmp_path / "elsewhere")  # the first machine's own disk
    machine("machine2")
    part = make_images(tmp_path / "parts", n=1, size=200, seed=5)[0].name
    installed = runner.invoke(app, ["models", "install-demo"])
    assert installed.exit_code == 0, installed.exception
    judged = runner.invoke(app, ["inspect", str(tmp_path / "parts" / part), "--station", "m2"])
    assert judged.exit_code == 0, judged.exception
    assert part in judged.output
    url = get_settings().resolved_database_url
    with session_scope(url) as session:
        version = production_model(session, ModelKind.DETECTOR)
        assert str(tmp_path / "machine1") in version.file_path  # the registration is kept
        here = weights_file(version)
        assert here == get_settings().models_dir / version.name / "weights.pt"
        here.write_bytes(here.read_bytes() + b"\0")  # not the version's bytes any more
        with pytest.raises(UserError, match="weights of neu-det-demo-v.* are missing"):
            weights_file(version)


def test_the_demos_copied_files_are_on_disk_under_their_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's weights and .onnx, copied where a version registered by another station
    sharing the database names them, were renamed into place unsynced: after a power cut the
    file could be empty under its name. Its bytes are synced before the rename, its folder's
    entry after."""
    import os

    from training.demo import _copy_whole

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc here")
    source, target = tmp_path / "weights.onnx", tmp_path / "models" / "demo" / "weights.onnx"
    source.write_bytes(b"an export" * 100)
    target.parent.mkdir(parents=True)
    synced: list[tuple[str, bool]] = []  # each path synced, and whether the copy had its name
    fsync = os.fsync

    def spying(fd: int) -> None:
        fsync(fd)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), target.exists()))

    monkeypatch.setattr(os, "fsync", spying)
    _copy_whole(source, target)
    assert target.read_bytes() == source.read_bytes()
    assert len(synced) == 2
    assert ".weights.onnx." in synced[0][0] and not synced[0][1]  # the copy, before its rename
    assert synced[1] == (str(target.parent.resolve()), True)  # its name, after


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (errno.ENOSPC, "free space there"),
        (errno.EIO, "check its disk"),
        (errno.EACCES, "make it writable for this user"),
        (
            errno.EROFS,
            "the file system is mounted read-only: remount it read-write or use another place",
        ),
    ],
)
def test_a_demo_copy_that_fails_says_what_would_help(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, fix: str
) -> None:
    """A demo's copy into the model store failing on a failing disk (EIO) or a folder not
    writable (EACCES) was told "free space there", which would not help; only a full disk is.
    A read-only file system (EROFS) was told to make the folder writable for this user."""
    from inspection.errors import UserError
    from training.demo import _copy_whole

    source, target = tmp_path / "weights.pt", tmp_path / "models" / "demo" / "weights.pt"
    source.write_bytes(b"weights")
    target.parent.mkdir(parents=True)

    def failing(src: Path, dst: Path) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(shutil, "copyfile", failing)
    with pytest.raises(UserError) as raised:
        _copy_whole(source, target)
    said = str(raised.value)
    assert f"{os.strerror(code)}; {fix} and run the same command again" in said
    assert list(target.parent.iterdir()) == []
