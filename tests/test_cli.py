from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from inspection.errors import UserError
from tests.conftest import unlistable
from training.cli import app

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("db", "models"):
        assert command in result.output


def test_db_upgrade_creates_the_default_sqlite_database(tmp_path: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "defects.db").exists()
    assert "revision" in result.output


def test_user_mistakes_print_one_line_and_exit_non_zero(tmp_path: Path) -> None:
    env = {"DEFECTS_DATA_DIR": str(tmp_path / "d"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from training.cli import main; main()",
            "models",
            "promote",
            "nope",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: no model version 'nope' (see `defects models list`)"
    assert "Traceback" not in done.stderr

    dead = subprocess.run(
        [sys.executable, "-c", "from training.cli import main; main()", "db", "upgrade"],
        capture_output=True,
        text=True,
        env={**env, "DEFECTS_DATABASE_URL": "postgresql+psycopg://u:pw@127.0.0.1:1/x"},
        cwd=Path(__file__).parents[1],
    )
    assert dead.returncode == 1
    assert (
        dead.stderr.startswith("error: cannot reach the database")
        and "Traceback" not in dead.stderr
    )
    assert len(dead.stderr.strip().splitlines()) == 1

    from sqlalchemy import text

    from db.session import get_engine

    with get_engine(f"sqlite:///{tmp_path / 'd' / 'defects.db'}").begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    newer = subprocess.run(
        [sys.executable, "-c", "from training.cli import main; main()", "models", "list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[1],
    )
    assert newer.returncode == 1 and "Traceback" not in newer.stderr
    [line] = newer.stderr.strip().splitlines()
    assert line.startswith("error: the database at sqlite:") and "revision f00d, newer" in line


def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    env = {
        "DEFECTS_DATA_DIR": str(tmp_path / "d"),
        "DEFECTS_GPU_STREAMS": "0",
        "DEFECTS_DEVICE": "gpu",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-c", "from training.cli import main; main()", "models", "list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: invalid setting DEFECTS_DEVICE='gpu'")
    assert "DEFECTS_GPU_STREAMS='0'" in line
    assert not (tmp_path / "data").exists() and not (tmp_path / "d").exists()  # nothing made


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "-inf"])
def test_a_database_outage_limit_must_be_finite(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`inf` and `1e400` were taken, and a run waited for a database gone away for ever
    instead of stopping with the error; `nan` was refused as "less than 0"."""
    from inspection.settings import SettingsError, get_settings

    monkeypatch.setenv("DEFECTS_DB_OUTAGE_SECONDS", value)
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as refused:
        get_settings()
    [line] = str(refused.value).splitlines()
    assert line.startswith(f"invalid setting DEFECTS_DB_OUTAGE_SECONDS={value!r}: a finite")
    monkeypatch.setenv("DEFECTS_DB_OUTAGE_SECONDS", "86400")
    get_settings.cache_clear()
    assert get_settings().db_outage_seconds == 86400.0


def _defects_with(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`defects models list` with these variables only (and PATH)."""
    return subprocess.run(
        [sys.executable, "-c", "from training.cli import main; main()", "models", "list"],
        capture_output=True,
        text=True,
        env={**env, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1])},
        cwd=cwd,
    )


def test_a_data_folder_that_is_a_file_or_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    """Both ended every command in a traceback at start-up (NotADirectoryError,
    PermissionError), before any command could say which setting was wrong."""
    from tests.conftest import read_only

    a_file = tmp_path / "data.txt"
    a_file.write_text("not a folder")
    done = _defects_with({"DEFECTS_DATA_DIR": str(a_file)}, tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line == (
        f"error: invalid setting DEFECTS_DATA_DIR={str(a_file)!r}: {a_file} is a file, not a folder"
    )
    assert a_file.read_text() == "not a folder"

    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        done = _defects_with({"DEFECTS_DATA_DIR": str(locked / "data")}, tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(
        f"error: cannot make the data folder {locked / 'data'} (DEFECTS_DATA_DIR)"
    )


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("mysql://u:secret@db.example/defects", "'mysql'"),  # its driver is not installed
        ("postgres://u:secret@db.example/defects", "'postgres'"),  # no such kind in SQLAlchemy
        # (libpq takes a password in the query too: it was shown whole)
        ("mysql://u@db.example/defects?password=secret&connect_timeout=5", "'mysql'"),
    ],
)
def test_a_database_url_this_installation_cannot_use_is_one_line(
    tmp_path: Path, url: str, named: str
) -> None:
    """SQLAlchemy's ModuleNotFoundError or NoSuchModuleError ended the command in a traceback."""
    done = _defects_with(
        {"DEFECTS_DATA_DIR": str(tmp_path / "d"), "DEFECTS_DATABASE_URL": url}, tmp_path
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: the database URL ") and named in line
    assert "secret" not in line and "postgresql+psycopg://" in line


def test_a_command_ends_without_teardown_but_with_its_output_and_exit_code(
    tmp_path: Path,
) -> None:
    """The process ends by os._exit: what was printed but still buffered (stdout to a pipe)
    must arrive, and each way of ending keeps its exit code."""
    root = Path(__file__).parents[1]
    cases = {
        "print('written', end=''); end_process(0)": (0, "written", ""),
        "print('half', end=''); end_process(3)": (3, "half", ""),
        "end_process('a library gave up')": (1, "", "a library gave up"),
        "end_process(None)": (0, "", ""),
    }
    for code, (returncode, stdout, stderr) in cases.items():
        done = subprocess.run(
            [sys.executable, "-c", f"from inspection.runtime import end_process\n{code}"],
            capture_output=True,
            text=True,
            env={"DEFECTS_DATA_DIR": str(tmp_path / "d"), "PATH": "/usr/bin:/bin"},
            cwd=root,
        )
        assert (done.returncode, done.stdout, done.stderr.strip()) == (returncode, stdout, stderr)
    help_text = subprocess.run(
        [sys.executable, "-c", "from training.cli import main; main()", "--help"],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert help_text.returncode == 0 and "Commands" in help_text.stdout


def _three_promoted(url: str) -> list[int]:
    """Three detector versions v1, v2, v3 (rows alone), promoted in that order in a new
    database at `url`: v3 in production, v2 the one a rollback restores. Their ids."""
    from db.models import ModelKind, ModelVersion
    from db.registry import promote
    from db.session import session_scope
    from tests.conftest import migrated

    migrated(url)
    with session_scope(url) as session:
        versions = [
            ModelVersion(
                name=f"v{i}",
                kind=ModelKind.DETECTOR,
                architecture="defect-yolo-n",
                file_path="x.pt",
                sha256="0" * 64,
            )
            for i in (1, 2, 3)
        ]
        session.add_all(versions)
        session.flush()
        for version in versions:
            promote(session, version)
        return [v.id for v in versions]


def test_archiving_leaves_production_and_the_rollback_order_alone(tmp_path: Path) -> None:
    """Archiving an archived version once stamped it again, and a rollback then put it back
    instead of the version the production one replaced."""
    from db.models import ModelKind, ModelStage, ModelVersion
    from db.registry import production_model
    from db.session import session_scope
    from inspection.errors import UserError
    from inspection.settings import get_settings

    url = get_settings().resolved_database_url
    version_ids = _three_promoted(url)  # v1, then v2, then v3 in production
    assert (
        runner.invoke(app, ["models", "archive", "v1"]).output.strip() == "v1 is archived already"
    )
    refused = runner.invoke(app, ["models", "archive", "v3"])
    assert refused.exit_code == 1 and isinstance(refused.exception, UserError)
    assert "in production" in str(refused.exception)
    assert runner.invoke(app, ["models", "rollback"]).exit_code == 0
    with session_scope(url) as session:
        restored = production_model(session, ModelKind.DETECTOR)
        assert restored is not None and restored.name == "v2"
        assert session.get(ModelVersion, version_ids[2]).stage == ModelStage.CANDIDATE


def test_a_version_archived_by_hand_is_not_put_back_by_a_rollback(tmp_path: Path) -> None:
    """A version rolled back from (a candidate again) and then archived by hand was stamped
    last, so the next rollback put the retired version back into production."""
    from db.models import ModelKind, ModelStage, ModelVersion
    from db.registry import production_model
    from db.session import session_scope
    from inspection.settings import get_settings

    url = get_settings().resolved_database_url
    version_ids = _three_promoted(url)  # v1, then v2, then v3 in production
    assert runner.invoke(app, ["models", "rollback"]).output.strip().startswith("v2 ")
    assert runner.invoke(app, ["models", "archive", "v3"]).output.strip() == "v3 archived"
    assert runner.invoke(app, ["models", "rollback"]).output.strip().startswith("v1 ")
    with session_scope(url) as session:
        restored = production_model(session, ModelKind.DETECTOR)
        assert restored is not None and restored.name == "v1"
        assert session.get(ModelVersion, version_ids[2]).stage == ModelStage.ARCHIVED


def test_an_unknown_or_absent_device_is_one_line(tmp_path: Path) -> None:
    from inspection.errors import UserError
    from inspection.settings import resolve_device

    for device, said in [
        ("foo", "device must be"),
        ("cuda:x", "device must be"),
        ("cuda:0", "CUDA"),
    ]:
        try:
            resolve_device(device)
        except UserError as exc:
            assert said in str(exc)
        else:
            raise AssertionError(f"{device} was accepted")
    assert resolve_device("cpu") == "cpu"


def test_a_list_of_gpus_is_refused_where_one_device_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DEFECTS_DEVICE=cuda:0,1 (set for a detector's training on two GPUs) or --device
    cuda:0,1 passed validation for inspection, evaluation and export, and failed in torch with
    a traceback."""
    from inspection.errors import UserError
    from inspection.settings import get_settings, resolve_device

    with pytest.raises(UserError, match=r"^--device cuda:0,1 lists several GPUs"):
        resolve_device("cuda:0,1")
    monkeypatch.setenv("DEFECTS_DEVICE", "cuda:0,1")
    get_settings.cache_clear()
    with pytest.raises(UserError, match=r"^DEFECTS_DEVICE=cuda:0,1 lists several GPUs"):
        resolve_device()


def test_int8_without_data_is_refused_before_any_export(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(tmp_path / "none.pt"), "--int8"])
    assert result.exit_code == 1 and "--int8 needs --data" in str(result.exception)


def test_options_a_resume_ignores_are_said(tmp_path: Path) -> None:
    """--epochs and --imgsz beside --resume were dropped without a word."""
    given = ["train", "detector", "--data", "none", "--resume"]
    result = runner.invoke(app, [*given, "--epochs", "5", "--imgsz", "320"])
    assert "--epochs, --imgsz ignored with --resume" in result.output
    assert "ignored" not in runner.invoke(app, given).output
    # A distillation goes on with the loss it was started with.
    distill = ["distill", "detector", "--teacher", "t", "--data", "none", "--resume"]
    assert (
        "--method ignored with --resume" in runner.invoke(app, [*distill, "--method", "cwd"]).output
    )


def test_only_the_training_datasets_test_figures_are_the_headline(
    database_url: str, tmp_path: Path
) -> None:
    """A test-split evaluation on any dataset replaced the version's headline figures, and a
    split with no labeled defect stored null figures over measured ones."""
    from sqlalchemy import select

    from db.models import Dataset, ModelKind, ModelVersion
    from db.registry import get_model_version
    from db.session import session_scope
    from training.cli import _store_evaluation
    from training.versions import register_model_version

    weights = tmp_path / "best.pt"
    weights.write_bytes(b"weights")
    with session_scope(database_url) as session:
        own = Dataset(
            name="line1", source="s", source_format="voc", root_path=str(tmp_path), classes=["a"]
        )
        session.add(own)
        session.flush()
        for name, dataset in (("m", own), ("demo", None), ("1", own)):
            register_model_version(
                session,
                weights,
                tmp_path / "models",
                kind=ModelKind.DETECTOR,
                architecture="x",
                class_names=["a"],
                image_size=64,
                dataset=dataset,
                name=name,
            )
    measured = {"map50": 0.8, "map50_95": 0.5, "miss_rate": 0.1, "false_call_rate": 0.2}
    _store_evaluation(database_url, "m", "line1", "test", measured)
    _store_evaluation(database_url, "m", "line2", "test", {**measured, "map50": 0.1})
    nothing_labeled = {"map50": None, "map50_95": None, "miss_rate": None, "false_call_rate": 0.3}
    _store_evaluation(database_url, "m", "line1", "test", nothing_labeled)
    _store_evaluation(database_url, "demo", "line1", "test", measured)  # trained on no dataset here
    with session_scope(database_url) as session:
        metrics = get_model_version(session, "m").metrics
        demo = get_model_version(session, "demo").metrics
    assert {k: metrics[k] for k in measured} == {**measured, "false_call_rate": 0.3}
    assert metrics["evaluations"]["line2:test"]["map50"] == 0.1
    assert metrics["evaluations"]["line1:test"] == nothing_labeled
    assert "map50" not in demo and "line1:test" in demo["evaluations"]
    # (A version named with digits was taken for the version of that id: "m", id 1.)
    _store_evaluation(database_url, "1", "line3", "val", measured)
    with session_scope(database_url) as session:
        named_one = session.scalars(select(ModelVersion).where(ModelVersion.name == "1")).one()
        assert "line3:val" in named_one.metrics["evaluations"]
        assert "line3:val" not in get_model_version(session, "m").metrics["evaluations"]


def _detectors(tmp_path: Path, versions: dict[str, dict[str, Any]]) -> None:
    """Detector versions registered by name with the given fields (metrics, classes), in a
    migrated database: what promotion warnings read."""
    from db.models import ModelKind, ModelVersion
    from db.session import session_scope
    from inspection.settings import get_settings
    from tests.conftest import migrated

    url = get_settings().resolved_database_url
    migrated(url)
    with session_scope(url) as session:
        for name, fields in versions.items():
            session.add(
                ModelVersion(
                    name=name,
                    kind=ModelKind.DETECTOR,
                    architecture="defect-yolo-n",
                    file_path=str(tmp_path / f"{name}.pt"),
                    sha256=name.ljust(64, "0"),
                    **fields,
                )
            )


# The operating point `defects calibrate` stores (its figures apart): a version calibrated.
CALIBRATED = {"per_class": {}, "default": 0.1, "calibration": {"data": "d", "split": "val"}}


def test_a_promotion_the_figures_argue_against_is_warned_about(tmp_path: Path) -> None:
    """A detector with mAP50 0.000 and miss rate 1.000 went into production without a word."""
    _detectors(
        tmp_path,
        {
            "good": {"metrics": {"map50": 0.70, "miss_rate": 0.01}, "thresholds": CALIBRATED},
            "broken": {"metrics": {"map50": 0.0, "miss_rate": 1.0}, "thresholds": CALIBRATED},
            "unevaluated": {"metrics": {}, "thresholds": CALIBRATED},
        },
    )
    assert "warning" not in runner.invoke(app, ["models", "promote", "good"]).output
    broken = " ".join(runner.invoke(app, ["models", "promote", "broken"]).output.split())
    assert "broken is now the production detector, replacing good" in broken
    assert "broken has mAP50 0.000: it finds almost nothing" in broken
    assert "missed every defective part" in broken
    assert "mAP50 0.000 on the data good scored 0.700 on" in broken
    unevaluated = " ".join(runner.invoke(app, ["models", "promote", "unevaluated"]).output.split())
    assert "unevaluated has no evaluation" in unevaluated


def test_promoting_the_production_version_again_says_so_and_changes_nothing(
    tmp_path: Path,
) -> None:
    """Promoting the version already in production said it "is now the production detector"
    and stamped it promoted again: the model timeline showed a promotion that did not happen
    (and the one it replaced was no longer the one it said)."""
    from db.models import ModelVersion
    from db.session import session_scope
    from inspection.settings import get_settings

    _detectors(tmp_path, {"first": {"thresholds": CALIBRATED}, "second": {}})
    assert runner.invoke(app, ["models", "promote", "first"]).exit_code == 0
    assert runner.invoke(app, ["models", "promote", "second"]).exit_code == 0
    url = get_settings().resolved_database_url

    def stamps() -> dict[str, tuple[object, ...]]:
        with session_scope(url) as session:
            return {
                v.name: (v.stage, v.promoted_at, v.archived_at) for v in session.query(ModelVersion)
            }

    before = stamps()
    again = runner.invoke(app, ["models", "promote", "second"])
    assert again.exit_code == 0, again.output
    said = " ".join(again.output.split())
    assert said == "second is already the production detector"
    assert stamps() == before


def test_a_promotion_that_drops_classes_says_which(tmp_path: Path) -> None:
    """A detector that no longer knows a class (retired, or renamed) went into production
    without a word: parts whose only defect is of that class pass from then on."""
    evaluated = {"metrics": {"map50": 0.7, "miss_rate": 0.01}, "thresholds": CALIBRATED}
    _detectors(
        tmp_path,
        {
            "first": {"classes": ["scratch", "spot"], **evaluated},
            "more": {"classes": ["crack", "scratch", "spot"], **evaluated},
            "renamed": {"classes": ["crack", "pit", "scratch"], **evaluated},
        },
    )
    assert "warning" not in runner.invoke(app, ["models", "promote", "first"]).output
    assert "warning" not in runner.invoke(app, ["models", "promote", "more"]).output  # one more
    renamed = " ".join(runner.invoke(app, ["models", "promote", "renamed"]).output.split())
    assert "warning: renamed does not know spot, which more detected" in renamed
    assert "only defects are of these classes now passes" in renamed
    # (Said "left out of an export of reviews": its confirmed and added spots are kept.)
    assert "keeps the reviewed defects of these classes (confirmed or added) as new" in renamed
    assert "left out" not in renamed


def test_a_promotion_of_a_version_never_calibrated_says_so(tmp_path: Path) -> None:
    """A version fresh from training (a fine-tuned one too) judges at the default 0.25 of
    every class, its miss rate unknown: it replaced a calibrated production model without a
    word. Thresholds set by hand (the Settings page drops the calibration) are not warned of."""
    from training.versions import default_thresholds

    evaluated = {"metrics": {"map50": 0.7, "miss_rate": 0.01}, "classes": ["scratch", "spot"]}
    _detectors(
        tmp_path,
        {
            "calibrated": {**evaluated, "thresholds": CALIBRATED},
            "fresh": {**evaluated, "thresholds": default_thresholds(["scratch", "spot"])},
            "by-hand": {**evaluated, "thresholds": {"per_class": {"scratch": 0.4, "spot": 0.3}}},
        },
    )
    assert "warning" not in runner.invoke(app, ["models", "promote", "calibrated"]).output
    fresh = " ".join(runner.invoke(app, ["models", "promote", "fresh"]).output.split())
    assert "fresh is now the production detector, replacing calibrated" in fresh
    assert "warning: fresh was never calibrated: stations judge with it at 0.25" in fresh
    assert "defects calibrate fresh --data NAME --split val --max-miss-rate" in fresh
    assert "warning" not in runner.invoke(app, ["models", "promote", "by-hand"]).output


def test_a_promotions_warnings_are_of_the_version_promoted_when_its_name_is_digits(
    tmp_path: Path,
) -> None:
    """The warnings looked the promoted version up by its name as an id or a name: a version
    named "1" was taken for version 1, the calibrated one it replaced, and its own lack of a
    calibration went unsaid."""
    from training.versions import default_thresholds

    evaluated = {"metrics": {"map50": 0.7, "miss_rate": 0.01}, "classes": ["scratch", "spot"]}
    _detectors(
        tmp_path,
        {
            "calibrated": {**evaluated, "thresholds": CALIBRATED},  # (version 1)
            "1": {**evaluated, "thresholds": default_thresholds(["scratch", "spot"])},
        },
    )
    assert "warning" not in runner.invoke(app, ["models", "promote", "calibrated"]).output
    fresh = " ".join(runner.invoke(app, ["models", "promote", "2"]).output.split())
    assert "1 is now the production detector, replacing calibrated" in fresh
    assert "warning: 1 was never calibrated" in fresh


def _cli(args: list[str], data_dir: Path, columns: str = "80") -> subprocess.CompletedProcess[str]:
    """`defects ARGS` as a user runs it with its output piped: rich at 80 columns."""
    return subprocess.run(
        [sys.executable, "-c", "from training.cli import main; main()", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,  # (a terminal there would give rich its width)
        env={"DEFECTS_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin", "COLUMNS": columns},
        cwd=Path(__file__).parents[1],
    )


def test_model_names_are_listed_whole_at_80_columns_and_as_json(tmp_path: Path) -> None:
    """At 80 columns, or piped, the list folded names ("defect-y/olo-n-20/261127-0/04820")
    and cut stages ("product…"): a name could not be copied into `promote`."""
    import json

    from db.models import ModelKind, ModelVersion
    from db.registry import promote
    from db.session import session_scope
    from inspection.settings import get_settings
    from tests.conftest import migrated

    names = ["defect-yolo-n-20261127-004820", "defect-yolo-s-gated-20261127-113005-finetuned"]
    url = get_settings().resolved_database_url
    migrated(url)
    with session_scope(url) as session:
        teacher = None  # the second version is distilled from the first
        for i, name in enumerate(names):
            version = ModelVersion(
                name=name,
                kind=ModelKind.DETECTOR,
                architecture="defect-yolo-s-gated",
                file_path="x.pt",
                sha256=str(i).ljust(64, "0"),
                metrics={"map50": 0.5, "miss_rate": 0.01, "val_map50": 0.625},
                teacher=teacher,
                notes="distilled with cwd" if teacher else "",
            )
            session.add(version)
            session.flush()
            teacher = version
        promote(session, version)
    listed = _cli(["models", "list"], tmp_path / "data")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    for whole in [*names, "defect-yolo-s-gated", "production", "candidate", "0.500", "0.010"]:
        assert any(whole in line for line in lines), (whole, listed.stdout)
    for whole in ["val", "0.625"]:  # (known from training, before any evaluate)
        assert any(whole in line for line in lines), (whole, listed.stdout)
    assert "…" not in listed.stdout
    # Times are stored in UTC, and the list says so (a reader on local time took them for his).
    assert "(UTC)" in listed.stdout
    as_json = _cli(["models", "list", "--json"], tmp_path / "data")
    rows = json.loads(as_json.stdout)  # (a list, as scripts have read it from the start)
    assert [row["name"] for row in rows] == names[::-1]  # newest first
    assert rows[0]["stage"] == "production" and rows[0]["map50"] == 0.5
    assert rows[0]["val_map50"] == 0.625
    assert rows[0]["created_at"].endswith("Z")
    assert rows[0]["teacher"] == names[0] and rows[1]["teacher"] is None
    assert rows[0]["notes"] == "distilled with cwd" and rows[0]["dataset"] is None


def test_models_list_says_under_its_table_what_each_version_was_made_from(
    tmp_path: Path,
) -> None:
    """Whether a version was fine-tuned (from what) or distilled (its teacher) was said only by
    `--json` and the Models page: the table, at 80 columns as wider, showed none of it."""
    from db.models import ModelKind, ModelVersion
    from db.session import session_scope
    from inspection.settings import get_settings
    from tests.conftest import migrated

    base, student, tuned = "line3-teacher-s", "line3-n-distilled", "line3-n-tuned"
    url = get_settings().resolved_database_url
    migrated(url)
    with session_scope(url) as session:
        made: dict[str, ModelVersion] = {}
        for i, (name, teacher, notes) in enumerate(
            (
                (base, None, ""),
                (student, base, f"fine-tuned from {base}; distilled with cwd"),
                (tuned, None, f"fine-tuned from {student}"),
            )
        ):
            made[name] = ModelVersion(
                name=name,
                kind=ModelKind.DETECTOR,
                architecture="defect-yolo-n",
                file_path="x.pt",
                sha256=str(i).ljust(64, "0"),
                teacher=made.get(teacher or ""),
                notes=notes,
            )
            session.add(made[name])
            session.flush()
    for columns in ("80", "120"):
        listed = _cli(["models", "list"], tmp_path / "data", columns)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert f"{student}: fine-tuned from {base}, distilled from {base} with cwd" in lines
        assert f"{tuned}: fine-tuned from {student}" in lines
        assert not any(line.startswith(f"{base}:") for line in lines), listed.stdout
        assert "…" not in listed.stdout


def test_models_list_says_old_folders_no_version_names_and_how_to_remove_them(
    tmp_path: Path,
) -> None:
    """A registration killed between the weights' copy and its commit left a folder in the
    model store that no version names, holding a copy of the weights, said nowhere. The list
    names such a folder, unchanged for over an hour, with how to remove it; a fresh one (a
    registration in progress on another station) and a version's own folder are not said."""
    import json
    import os
    import time

    from db.models import ModelKind, ModelVersion
    from db.session import session_scope
    from inspection.settings import get_settings
    from tests.conftest import migrated

    url = get_settings().resolved_database_url
    migrated(url)
    models = get_settings().models_dir
    hour_ago = time.time() - 2 * 3600
    for name in ("kept-v1", "defect-yolo-n-20261127-004820", "defect-yolo-n-20261127-101500"):
        (models / name).mkdir(parents=True)
        (models / name / "best.pt").write_bytes(b"weights")
        if name != "defect-yolo-n-20261127-101500":  # (that one: being registered now)
            os.utime(models / name / "best.pt", (hour_ago, hour_ago))
            os.utime(models / name, (hour_ago, hour_ago))
    with session_scope(url) as session:
        session.add(
            ModelVersion(
                name="kept-v1",
                kind=ModelKind.DETECTOR,
                architecture="defect-yolo-n",
                file_path=str(models / "kept-v1" / "best.pt"),
                sha256="0" * 64,
            )
        )
    listed = _cli(["models", "list"], tmp_path / "data")
    assert listed.returncode == 0, listed.stderr
    said = " ".join(listed.stdout.split())
    assert f"1 folder in {models} that no model version names, unchanged for over 1 hour" in said, (
        said
    )
    assert f"remove it with `rm -r {models / 'defect-yolo-n-20261127-004820'}`" in said
    assert "20261127-101500" not in said
    assert json.loads(_cli(["models", "list", "--json"], tmp_path / "data").stdout)[0]["name"]


def test_models_jobs_gives_the_training_jobs_in_json_and_models_list_in_its_table(
    tmp_path: Path,
) -> None:
    """The training jobs (running, failed, stopped) were shown on the Models page alone:
    nothing on the command line said them, and a script on a station without the dashboard
    could not tell a training had failed. A running job whose process is gone is
    said failed, as the page says it."""
    import json
    from datetime import datetime

    from db.models import JobStatus, ModelKind, ModelVersion, TrainingJob
    from db.session import session_scope
    from inspection.settings import get_settings
    from tests.conftest import migrated

    url = get_settings().resolved_database_url
    migrated(url)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    with session_scope(url) as session:
        version = ModelVersion(
            name="trained-one",
            kind=ModelKind.DETECTOR,
            architecture="defect-yolo-n",
            file_path="x.pt",
            sha256="0" * 64,
        )
        session.add(version)
        session.flush()
        session.add_all(
            [
                TrainingJob(
                    kind="train-detector",
                    status=JobStatus.SUCCEEDED,
                    params={"data": "parts"},
                    progress=1.0,
                    result_model_version_id=version.id,
                    created_at=datetime(2026, 11, 27, 10, 0),
                ),
                TrainingJob(
                    kind="train-classifier",
                    status=JobStatus.FAILED,
                    params={"data": "parts"},
                    error="RuntimeError: out of memory",
                    created_at=datetime(2026, 11, 27, 11, 0),
                ),
                TrainingJob(  # its process was killed outright
                    kind="distill-detector",
                    status=JobStatus.RUNNING,
                    params={"data": "parts"},
                    pid=int(gone),
                    created_at=datetime(2026, 11, 27, 12, 0),
                ),
            ]
        )
    jobs = json.loads(_cli(["models", "jobs", "--json"], tmp_path / "data").stdout)
    assert [(j["kind"], j["status"]) for j in jobs] == [
        ("distill-detector", "failed"),
        ("train-classifier", "failed"),
        ("train-detector", "succeeded"),
    ]
    assert jobs[0]["error"].startswith("its process ended without finishing")
    assert jobs[1]["error"] == "RuntimeError: out of memory"
    assert jobs[2]["model_version"] == "trained-one" and jobs[2]["dataset"] == "parts"
    assert jobs[2]["created_at"] == "2026-11-27T10:00:00Z" and jobs[2]["progress"] == 1.0
    assert set(jobs[0]) == {
        "id",
        "kind",
        "status",
        "progress",
        "dataset",
        "model_version",
        "error",
        "resumes",
        "resumed_as",
        "host",
        "pid",
        "created_at",
        "finished_at",
    }
    classifiers = _cli(["models", "jobs", "--kind", "classifier", "--json"], tmp_path / "data")
    assert [j["kind"] for j in json.loads(classifiers.stdout)] == ["train-classifier"]
    # The tables say them too, a failed job with its reason, also under the versions.
    for command in (["models", "jobs"], ["models", "list"]):
        listed = _cli(command, tmp_path / "data").stdout
        assert "out of memory" in listed and "distill-detector" in listed, listed
    assert "training jobs" in listed
    # A stopped training resumed is a new job: the stopped one said "cancelled" and no more.
    with session_scope(url) as session:
        stopped = TrainingJob(
            kind="train-detector",
            status=JobStatus.CANCELLED,
            params={"data": "parts"},
            progress=1 / 3,
            error="stopped (Ctrl-C or SIGTERM)",
            created_at=datetime(2026, 11, 27, 13, 0),
        )
        session.add(stopped)
        session.flush()
        resumed = TrainingJob(
            kind="train-detector",
            status=JobStatus.SUCCEEDED,
            params={"data": "parts", "resumes_job": stopped.id},
            progress=1.0,
            created_at=datetime(2026, 11, 27, 14, 0),
        )
        session.add(resumed)
        session.flush()
        ids = stopped.id, resumed.id
    listed = _cli(["models", "jobs"], tmp_path / "data", columns="200").stdout  # (one line each)
    assert f"resumed as job {ids[1]}" in listed and f"resumes job {ids[0]}" in listed, listed


def test_models_help_names_every_subcommand() -> None:
    result = runner.invoke(app, ["models", "--help"])
    assert "list, promote, roll back, archive; install the demo model" in " ".join(
        result.output.split()
    )
    for command in ("list", "jobs", "promote", "rollback", "archive", "install-demo"):
        assert command in result.output


def test_batch_output_missing_folders_empty_folders_and_one_part(tmp_path: Path) -> None:
    """--output foo.csv without --export csv wrote nothing; --watch of a missing folder said
    "--watch needs a folder"; an empty folder, or a zip of folders and hidden files only,
    gave "0 parts inspected" without a word; one part was "1 parts inspected"."""
    import zipfile

    import numpy as np
    from PIL import Image

    refused = runner.invoke(
        app, ["batch", str(tmp_path), "--line", "L", "--station", "S", "--output", "x.txt"]
    )
    assert refused.exit_code == 1 and "add --export csv" in str(refused.exception)
    for watch in ([], ["--watch"]):
        missing = runner.invoke(
            app, ["batch", str(tmp_path / "gone"), "--line", "L", "--station", "S", *watch]
        )
        said = "folder to watch not found" if watch else "source not found"
        assert f"{said}: {tmp_path / 'gone'}" in str(missing.exception)
    assert runner.invoke(app, ["models", "install-demo"]).exit_code == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["batch", str(empty), "--line", "L", "--station", "S"])
    assert result.exit_code == 0, result.output
    assert f"warning: no file to inspect in {empty}" in " ".join(result.output.split())
    folders_only = tmp_path / "folders.zip"
    with zipfile.ZipFile(folders_only, "w") as archive:
        archive.writestr("lot 7/", b"")
        archive.writestr("lot 7/.DS_Store", b"")
    result = runner.invoke(app, ["batch", str(folders_only), "--line", "L", "--station", "S"])
    assert result.exit_code == 0, result.output
    assert f"warning: no file to inspect in {folders_only}" in " ".join(result.output.split())
    one = tmp_path / "one"
    one.mkdir()
    Image.fromarray(np.full((64, 64), 90, np.uint8) + np.eye(64, dtype=np.uint8) * 60).save(
        one / "part.png"
    )
    target = tmp_path / "out.csv"
    result = runner.invoke(
        app, ["batch", str(one), "--line", "L", "--station", "S", "--output", str(target)]
    )
    assert result.exit_code == 0, result.output
    summary = " ".join(result.output.split())
    assert "1 part inspected" in summary and "0 errors" in summary
    assert "warning" not in summary
    assert target.read_text().splitlines()[1].startswith("part.png,")


def test_a_damaged_zip_or_unreadable_folder_is_refused_before_a_run_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Either stopped the command only after the model had loaded and a run had been opened
    on the station, which then showed as its latest run, with no part. (A zip of too many
    entries too, refused from its end record alone.)"""

    from sqlalchemy import func, select

    import inspection.batch
    from db.models import InspectionRun
    from db.session import session_scope
    from inspection.settings import get_settings

    assert runner.invoke(app, ["models", "install-demo"]).exit_code == 0
    (tmp_path / "cut.zip").write_bytes(b"PK\x03\x04 cut short in the copy")
    monkeypatch.setattr(inspection.batch, "MAX_ZIP_ENTRIES", 1)
    with zipfile.ZipFile(tmp_path / "many.zip", "w") as zf:
        zf.writestr("a.png", b"a")
        zf.writestr("b.png", b"b")
    locked = tmp_path / "locked"
    locked.mkdir()
    with unlistable(locked, monkeypatch):
        for source, said in [
            (tmp_path / "cut.zip", "cannot open the zip cut.zip"),
            (tmp_path / "many.zip", "too many entries in the zip many.zip (2 entries, at most 1:"),
            (locked, f"cannot read the folder {locked}: Permission denied"),
        ]:
            result = runner.invoke(app, ["batch", str(source), "--line", "L", "--station", "S"])
            assert result.exit_code == 1 and isinstance(result.exception, UserError)
            assert str(result.exception).startswith(said), result.exception
    with session_scope(get_settings().resolved_database_url) as session:
        assert session.scalar(select(func.count()).select_from(InspectionRun)) == 0


def test_hard_negative_mining_is_counted_over_the_training_images() -> None:
    """Of 33 training images, "0 false detections on 0 training images" was printed: the
    count was of the images that had a false detection."""
    from training.train_classifier import hard_negatives_note

    none = hard_negatives_note({}, 33, "det-v1")
    assert none == (
        "hard negatives: det-v1 made no false detection on the 33 training images, "
        "so none are learned"
    )
    box = (0.0, 0.0, 1.0, 1.0)
    some = hard_negatives_note({0: [box, box], 5: [box]}, 33, "det-v1")
    assert some == "hard negatives: 3 false detections of det-v1, on 2 of the 33 training images"


def test_an_onnx_export_says_nothing_of_ultralytics_scratch_folder(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """ultralytics printed "Results saved to .../.export-XXXX/best.onnx" and `yolo predict`
    commands naming the scratch folder, deleted by the time they were read."""
    import logging
    import shutil

    from training.demo import DEMO_DIR
    from training.export import export_detector

    weights = Path(shutil.copy2(DEMO_DIR / "weights.pt", tmp_path / "best.pt"))
    level = logging.getLogger("ultralytics").level
    capfd.readouterr()
    assert export_detector(weights) == tmp_path / "best.onnx"
    out, err = capfd.readouterr()
    assert ".export-" not in out + err and "Results saved" not in out + err, out + err
    assert "deprecated" not in out + err  # (its `half` argument)
    assert (tmp_path / "best.onnx").is_file()
    assert logging.getLogger("ultralytics").level == level


def test_an_import_whose_val_split_has_no_good_part_says_so(tmp_path: Path) -> None:
    """A split by hash put none of a dataset's good parts in val; calibration on val then said
    "false calls unknown" with no hint why."""
    from tests.synthetic import write_voc

    images = write_voc(tmp_path / "src", n=12)
    good = sorted(i.name for i in images if not i.boxes)
    defective = sorted(i.name for i in images if i.boxes)
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train.txt").write_text("\n".join(good + defective[:6]))
    (splits / "val.txt").write_text("\n".join(defective[6:8]))
    (splits / "test.txt").write_text("\n".join(defective[8:]))
    args = ["import", "voc", str(tmp_path / "src"), "--splits", str(splits)]
    result = runner.invoke(app, [*args, "--name", "nogood"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert f"val holds none of the {len(good)} good parts" in said
    (splits / "val.txt").write_text("\n".join([good[0], *defective[6:8]]))
    (splits / "train.txt").write_text("\n".join(good[1:] + defective[:6]))
    again = runner.invoke(app, [*args, "--name", "somegood"])
    assert again.exit_code == 0 and "val holds none" not in again.output


def test_a_mistyped_or_read_only_sqlite_database_is_one_line(tmp_path: Path) -> None:
    """A mistyped folder in DEFECTS_DATABASE_URL made a new empty database ("no model versions
    yet"); a read-only one said "attempt to write a readonly database" or "unable to open
    database file", naming neither the file nor its folder."""
    import numpy as np
    from PIL import Image

    from tests.conftest import read_only

    def defects(*args: str, url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from training.cli import main; main()", *args],
            capture_output=True,
            text=True,
            env={
                "DEFECTS_DATA_DIR": str(tmp_path / "data"),
                "DEFECTS_DATABASE_URL": url,
                "PATH": "/usr/bin:/bin",
            },
            cwd=Path(__file__).parents[1],
        )

    typo = tmp_path / "typo" / "dir"
    done = defects("models", "list", url=f"sqlite:///{typo / 'defects.db'}")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"error: the folder {typo} of the SQLite database ")
    assert done.stderr.count("\n") == 1 and not (tmp_path / "typo").exists()

    folder = tmp_path / "db"
    folder.mkdir()
    url = f"sqlite:///{folder / 'defects.db'}"
    assert defects("models", "install-demo", url=url).returncode == 0
    parts = tmp_path / "parts"
    parts.mkdir()
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(parts / "part.png")
    database = folder / "defects.db"
    import sqlite3

    with sqlite3.connect(database) as connection:  # closed cleanly: no -wal or -shm file left
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    batch = ["batch", str(parts), "--line", "L", "--station", "S"]
    with read_only(folder):  # SQLite cannot make its -wal and -shm files
        for command in (["status"], batch):
            done = defects(*command, url=url)
            assert done.returncode == 1, done
            assert done.stderr.startswith(
                f"error: the SQLite database {database} cannot be written: its folder {folder} "
                "is read-only for this user"
            ), done.stderr
            assert done.stderr.count("\n") == 1
    with read_only(database):  # read, not written: the status is shown, a batch refused
        assert defects("status", url=url).returncode == 0
        done = defects(*batch, url=url)
        assert done.returncode == 1, done
        assert done.stderr.startswith(
            f"error: the SQLite database {database} cannot be written: the file {database} is "
            "read-only for this user"
        ), done.stderr
        assert done.stderr.count("\n") == 1


def test_status_over_more_minutes_than_a_calendar_holds_is_refused_in_one_line() -> None:
    """`defects status --minutes 99999999999` passed the option's check and failed in the date
    arithmetic with a traceback (OverflowError); a century is still counted."""
    refused = runner.invoke(app, ["status", "--minutes", "99999999999"])
    assert refused.exit_code == 2, (refused.output, refused.exception)
    assert "--minutes" in refused.output
    century = runner.invoke(app, ["status", "--minutes", str(36525 * 24 * 60), "--json"])
    assert century.exit_code == 0, (century.output, century.exception)


def test_the_command_line_writes_whole_lines_into_a_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Into a file, a pipe or a service's journal, stdout went out in blocks of 8 KB: a
    training's epoch lines reached its log many epochs late."""
    import io

    import training.cli as cli

    into_log = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # as Python opens a pipe
    assert not into_log.line_buffering
    ended: list[object] = []
    monkeypatch.setattr(sys, "stdout", into_log)
    monkeypatch.setattr(cli, "app", lambda: print("epoch 1/10"))
    monkeypatch.setattr(cli, "end_process", ended.append)
    cli.main()
    assert into_log.line_buffering and ended == [0]
    assert into_log.buffer.getvalue() == b"epoch 1/10\n"  # out before the command ended


def test_a_versions_weights_are_on_disk_once_it_is_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weights' copy was renamed into the version's new folder unsynced: after a power cut
    the version could stand in the database with its weights' file empty or gone, and a
    station promoted onto it judged nothing. The bytes are synced before the rename; then the
    version's folder, the model store and its parent, where each new folder is named."""
    import os

    from db.models import ModelKind
    from db.session import session_scope
    from inspection.settings import get_settings
    from tests.conftest import migrated
    from tests.synthetic import CLASSES
    from training.versions import register_model_version

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc here")
    url = get_settings().resolved_database_url
    migrated(url)
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"weights")
    models_dir = tmp_path / "data" / "models"
    synced: list[str] = []
    fsync = os.fsync

    def spying_fsync(fd: int) -> None:
        fsync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", spying_fsync)
    with session_scope(url) as session:
        version = register_model_version(
            session,
            weights,
            models_dir,
            kind=ModelKind.DETECTOR,
            architecture="defect-yolo-n",
            class_names=CLASSES,
            image_size=64,
        )
        target = Path(version.file_path)
    copied, *folders = synced
    assert Path(copied).parent == target.parent and copied.endswith(".partial")
    assert folders == [str(target.parent), str(models_dir.resolve()), str(models_dir.parent)]
    assert target.read_bytes() == b"weights"


def test_a_version_whose_weights_are_gone_is_named_by_every_command(tmp_path: Path) -> None:
    """Deleted weights (or a data folder moved) gave inspect and batch one clear line, but
    export, evaluate, calibrate, training from it and distilling with it the system's
    "[Errno 2] No such file or directory"."""
    from db.models import ModelKind
    from db.session import session_scope
    from inspection.settings import get_settings
    from tests.conftest import import_synthetic, migrated
    from tests.synthetic import CLASSES
    from training.versions import register_model_version

    url = get_settings().resolved_database_url
    migrated(url)
    import_synthetic(url, tmp_path, n=6)
    weights = tmp_path / "gone.pt"
    weights.write_bytes(b"weights")
    with session_scope(url) as session:
        version = register_model_version(
            session,
            weights,
            tmp_path / "models",
            kind=ModelKind.DETECTOR,
            architecture="defect-yolo-n",
            class_names=CLASSES,
            image_size=64,
            name="gone",
        )
        Path(version.file_path).unlink()
    for command in (
        ["export", "gone"],
        ["evaluate", "gone", "--data", "synth"],
        ["calibrate", "gone", "--data", "synth", "--max-miss-rate", "0"],
        ["train", "detector", "--data", "synth", "--from", "gone", "--epochs", "1"],
        ["distill", "detector", "--teacher", "gone", "--data", "synth", "--epochs", "1"],
    ):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 1, (command, result.output)
        assert isinstance(result.exception, UserError), (command, result.exception)
        assert str(result.exception).startswith("the weights of gone are missing"), command
        # (The demo was offered for a version of one's own, which it cannot restore.)
        assert "install-demo" not in str(result.exception), command
        assert "train it again" in str(result.exception), command


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """Every command and group under `group`, by its words on the command line. (typer
    carries its own copy of click: its classes are not click's.)"""
    found: list[tuple[str, Any]] = []
    for name, command in group.commands.items():
        found.append((" ".join((*path, name)), command))
        if hasattr(command, "commands"):
            found += _commands(command, (*path, name))
    return found


def test_every_command_lists_in_one_line_and_every_option_says_what_it_is() -> None:
    """A docstring's first paragraph was listed with its line breaks (`defects --help` showed
    "production detector's" and "classes" on two lines), and options such as --epochs,
    --seed, --backend and export's --device had no help at all."""
    import typer.main

    commands = _commands(typer.main.get_command(app))
    assert {"export", "models install-demo", "distill classifier"} <= {n for n, _ in commands}
    for name, command in commands:
        first = (command.help or "").strip().split("\n\n")[0]
        assert first and "\n" not in first, f"{name}: {first!r}"
        for parameter in command.params:
            if parameter.name != "help":
                assert getattr(parameter, "help", None), f"{name} {parameter.name}: no help"


def test_export_refuses_a_device_it_would_not_use() -> None:
    """Any --device but cuda... was exported on the CPU without a word (--device gpu)."""
    result = runner.invoke(app, ["export", "nope", "--device", "gpu"])
    assert isinstance(result.exception, UserError)
    assert "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', not 'gpu'" in str(result.exception)


def test_only_a_point_as_registered_is_never_calibrated() -> None:
    """At the default for every class, a point is as registered unless calibrated or marked as
    set by hand; a point stored without the mark (saved by hand before it) reads as before."""
    from training.versions import default_thresholds, never_calibrated, set_by_hand

    classes = ["scratch", "spot"]
    registered = default_thresholds(classes)
    assert never_calibrated(registered, classes)
    assert never_calibrated({"per_class": {"scratch": 0.25}}, classes)  # (no mark: by values)
    assert not never_calibrated({"per_class": {"scratch": 0.4, "spot": 0.25}}, classes)
    by_hand = set_by_hand({**registered, "calibration": {"data": "d"}}, registered["per_class"])
    assert "calibration" not in by_hand and not never_calibrated(by_hand, classes)


def test_models_list_of_a_kind_with_none_says_that_kind_is_missing(tmp_path: Path) -> None:
    """`models list --kind classifier` beside a production detector said "no model versions
    yet ...: train one with `defects train detector`", as if the database held none."""
    assert runner.invoke(app, ["models", "install-demo"]).exit_code == 0
    result = runner.invoke(app, ["models", "list", "--kind", "classifier"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert said.startswith("no classifier versions yet in sqlite:///"), said
    assert "`defects train classifier`" in said and "install-demo" not in said


def test_training_names_an_evaluate_that_runs_only_where_the_dataset_has_test_images(
    tmp_path: Path,
) -> None:
    """A small import can put no image in test; a training on it still ended with "evaluate it
    with `defects evaluate V --data D --split test`", which was refused ("the dataset's test
    split holds no image")."""
    from db.models import Dataset, ModelKind, ModelVersion
    from training.cli import _how_to_evaluate

    root = tmp_path / "my-parts"
    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "train" / "a.png").write_bytes(b"")
    (root / "data.yaml").write_text(f"path: {root}\n")
    dataset = Dataset(name="my-parts", source="x", source_format="voc", root_path=str(root))
    version = ModelVersion(name="v1", kind=ModelKind.DETECTOR, dataset=dataset)

    said = _how_to_evaluate(version, "my-parts")
    assert said.startswith("my-parts's test split holds no image to evaluate it on"), said
    (root / "images" / "test").mkdir()
    (root / "images" / "test" / "b.png").write_bytes(b"")
    said = _how_to_evaluate(version, "my-parts")
    assert said == "evaluate it with `defects evaluate v1 --data my-parts --split test`"


def test_a_job_recorded_succeeded_with_its_version_is_not_said_failed_after(
    tmp_path: Path,
) -> None:
    """A training failed or stopped after its registration was committed (a dropped COMMIT
    connection, Ctrl-C in the last instant) had its succeeded row overwritten: `defects
    models jobs` said failed for a job whose version exists. Such a job stays succeeded;
    one not yet succeeded is still said failed."""
    import json

    from db.migrate import upgrade
    from db.models import JobStatus, ModelKind, ModelVersion, TrainingJob
    from db.session import session_scope
    from inspection.settings import get_settings
    from training.jobs import record_job_end

    url = get_settings().resolved_database_url
    upgrade(url)
    with session_scope(url) as session:
        version = ModelVersion(
            name="registered",
            kind=ModelKind.DETECTOR,
            architecture="defect-yolo-n",
            file_path="x.pt",
            sha256="0" * 64,
        )
        session.add(version)
        session.flush()
        done = TrainingJob(
            kind="train-detector", status=JobStatus.SUCCEEDED, result_model_version_id=version.id
        )
        running = TrainingJob(kind="train-classifier", status=JobStatus.RUNNING)
        session.add_all([done, running])
        session.flush()
        done_id, running_id = done.id, running.id
    record_job_end(url, done_id, RuntimeError("server closed the connection"))
    record_job_end(url, running_id, RuntimeError("out of memory"))
    jobs = json.loads(_cli(["models", "jobs", "--json"], tmp_path / "data").stdout)
    said = {j["id"]: (j["status"], j["error"], j["model_version"]) for j in jobs}
    assert said[done_id] == ("succeeded", None, "registered")
    assert said[running_id] == ("failed", "RuntimeError: out of memory", None)


@pytest.mark.parametrize(("kind", "folder"), [("classifier", "classify"), ("detector", "detect")])
def test_a_runs_folder_that_is_a_file_is_refused_in_one_line_before_a_job(
    kind: str, folder: str, tmp_path: Path
) -> None:
    """A file at `runs/classify` (or `runs/detect`) stopped the training on the system's bare
    "[Errno 17] File exists" ("[Errno 20] Not a directory"), its job recorded as failed."""
    from sqlalchemy import func, select

    from db.models import TrainingJob
    from db.session import session_scope
    from inspection.settings import get_settings
    from tests.conftest import import_synthetic, migrated

    url = get_settings().resolved_database_url
    migrated(url)
    import_synthetic(url, tmp_path / "synth", n=4)
    in_the_way = get_settings().runs_dir / folder
    in_the_way.parent.mkdir(parents=True, exist_ok=True)
    in_the_way.write_text("")
    result = _cli(["train", kind, "--data", "synth", "--epochs", "1"], tmp_path / "data")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: {in_the_way} is a file, not a folder: training runs are written under "
        f"{in_the_way}; move that file away and train again"
    ]
    with session_scope(url) as session:
        assert session.scalar(select(func.count(TrainingJob.id))) == 0


def test_evaluate_json_on_a_full_disk_leaves_the_earlier_file_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`evaluate --json FILE` wrote in place: a full disk left half a JSON file at FILE, which
    the scripts reading it failed to parse, and said the system's bare "[Errno 28]". It is now
    written whole or not at all (the file there before stays), and the error names it. (The
    full disk is simulated: the write leaves a few characters, then ENOSPC.)"""
    import errno
    import json

    from training.cli import _write_json

    path = tmp_path / "out" / "eval.json"
    path.parent.mkdir()
    path.write_text('{"earlier": true}')
    write_text = Path.write_text

    def filling(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        write_text(self, data[:5], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", filling)
    with pytest.raises(UserError, match=r"cannot write the results .*eval\.json: No space left "):
        _write_json(path, {"map50": 0.5})
    assert json.loads(path.read_text()) == {"earlier": True}
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # (no half file beside it)
    monkeypatch.setattr(Path, "write_text", write_text)  # (space freed)
    _write_json(path, {"map50": 0.5})
    assert json.loads(path.read_text()) == {"map50": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]


def test_evaluate_json_is_synced_and_a_failing_disk_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The results file was never synced: after a power cut it could be empty under its name,
    though the command had said "wrote". Its sync failing (EIO) now says to check the disk,
    not to free space, and the file there before stays."""
    import errno
    import os

    from training.cli import _write_json

    path = tmp_path / "eval.json"
    path.write_text("{}")

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(UserError, match=r"eval\.json: Input/output error; check its disk, or give"):
        _write_json(path, {"map50": 0.5})
    assert path.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_a_dataset_of_some_of_the_models_classes_is_told_how_to_import_it_in_its_order(
    tmp_path: Path,
) -> None:
    """A few NEU-DET images imported as VOC take the classes their boxes name, sorted: the
    demo's evaluate and calibrate refused them without saying that `--classes` gives the
    model's. Imported again as told, they evaluate."""
    from tests.synthetic import write_voc

    assert runner.invoke(app, ["models", "install-demo"]).exit_code == 0
    write_voc(tmp_path / "src", n=12, classes=["crazing", "patches"])
    imported = runner.invoke(app, ["import", "voc", str(tmp_path / "src"), "--name", "few"])
    assert imported.exit_code == 0, imported.output
    demo_classes = "crazing,inclusion,patches,pitted_surface,rolled-in_scale,scratches"
    for command in (
        ["evaluate", "neu-det-demo-v4", "--data", "few", "--split", "test"],
        [
            "calibrate",
            "neu-det-demo-v4",
            "--data",
            "few",
            "--split",
            "val",
            "--max-miss-rate",
            "0.1",
        ],
    ):
        refused = runner.invoke(app, command)
        assert refused.exit_code == 1
        assert f"`--classes {demo_classes}`" in str(refused.exception), command
    again = [str(tmp_path / "src"), "--name", "few", "--replace", "--classes", demo_classes]
    assert runner.invoke(app, ["import", "voc", *again]).exit_code == 0
    evaluated = runner.invoke(app, ["evaluate", "neu-det-demo-v4", "--data", "few"])
    assert evaluated.exit_code == 0, evaluated.output


def test_inspect_given_a_zip_points_to_batch_and_records_no_part(tmp_path: Path) -> None:
    """`defects inspect lot.zip` recorded the zip at the station as a part in error, "not an
    image file", where a folder was told to go to `defects batch`: a zip is told so too."""
    import json

    from PIL import Image

    assert runner.invoke(app, ["models", "install-demo"]).exit_code == 0
    part = tmp_path / "part.png"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(part)
    lot = tmp_path / "lot.zip"
    with zipfile.ZipFile(lot, "w") as archive:
        archive.write(part, "part.png")
    alone = runner.invoke(app, ["inspect", str(lot)])
    assert alone.exit_code == 1
    assert "a zip, not an image: `defects batch ZIP`" in str(alone.exception)
    beside = runner.invoke(app, ["inspect", str(part), str(lot)])
    assert beside.exit_code == 1
    assert f"1 of 2 paths name no image file: {lot}" in str(beside.exception)
    said = " ".join(beside.output.split())
    assert "part.png: ERROR blank image" in said and "lot.zip: ERROR a zip, not an image" in said
    status = json.loads(runner.invoke(app, ["status", "--json"]).output)
    (station,) = [s for s in status["stations"] if s["station"] == "default"]
    assert station["inspected"] == 1 and station["errors"] == 1  # the blank part alone


def test_a_write_the_database_refuses_is_said_in_one_line(tmp_path: Path) -> None:
    """A database that refused a write (a trigger, a CHECK, a name taken meanwhile) ended
    `users add` and every command but import in a traceback of the driver's error. It is one
    line now, naming the database, exit 1, and nothing of the refused write is kept."""
    from sqlalchemy import text

    from db.migrate import upgrade
    from db.models import User
    from db.session import get_engine, session_scope
    from inspection.settings import get_settings

    url = get_settings().resolved_database_url
    upgrade(url)
    with get_engine(url).begin() as connection:
        connection.execute(
            text(
                "CREATE TRIGGER frozen BEFORE INSERT ON users "
                "BEGIN SELECT RAISE(ABORT, 'accounts are frozen'); END"
            )
        )
    done = subprocess.run(
        [sys.executable, "-c", "from training.cli import main; main()"]
        + ["users", "add", "alice", "--role", "reviewer", "--password-stdin"],
        capture_output=True,
        text=True,
        input="a long enough password\n",
        env={"DEFECTS_DATA_DIR": str(get_settings().data_dir), "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: the database {url} refused this command's write (IntegrityError: accounts "
        "are frozen); that write was rolled back"
    ]
    with session_scope(url) as session:
        assert session.query(User).count() == 0


def test_a_connection_dropped_as_a_command_checks_the_schema_is_waited_for(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL restart (its backends terminated) as a command looked up the database's
    schema revision on start stopped it at once ("error: cannot reach the database ..."),
    where a batch run waits through one for DEFECTS_DB_OUTAGE_SECONDS. It is tried again."""
    if not database_url.startswith("postgresql"):
        pytest.skip("terminates a PostgreSQL backend")
    from inspection.settings import get_settings
    from tests.conftest import backend_terminated_at

    monkeypatch.setenv("DEFECTS_DATABASE_URL", database_url)
    get_settings.cache_clear()
    with backend_terminated_at(database_url, lambda s: "FROM alembic_version" in s) as dropped:
        result = runner.invoke(app, ["models", "list"])
    assert dropped
    assert result.exit_code == 0, result.output
    assert "cannot reach the database" not in result.output
