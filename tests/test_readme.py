"""README is the user's manual: the settings and command-line options it names must exist, with
the defaults it gives, and every setting and command must be in it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer.main

from inspection.settings import Settings
from training.cli import app

README = (Path(__file__).parents[1] / "README.md").read_text()


def _section(title: str) -> str:
    """The text of README's `## title` section, up to the next `## ` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def _first_cells(section: str) -> list[str]:
    """The first cell of each row of the section's table, `|` escapes undone."""
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [re.split(r"(?<!\\)\|", row)[1].strip().strip("`").replace("\\|", "|") for row in rows]


def test_readme_documents_every_setting_with_the_codes_default() -> None:
    """A setting added to the code and not to README's table, or one README still lists after
    it was removed, or a default the two give differently."""
    rows = {
        match[1]: match[2]
        for match in re.finditer(
            r"^\| `(DEFECTS_[A-Z_]+)` \| (.+?) \|", _section("Configuration"), re.M
        )
    }
    fields = {f"DEFECTS_{name.upper()}": field for name, field in Settings.model_fields.items()}
    assert set(rows) == set(fields)
    assert len(rows) >= 10
    for variable, field in fields.items():
        written = rows[variable]
        if not re.fullmatch(r"`[^`]+`", written):
            assert field.default is None, variable  # (a default said in words: none in code)
            continue
        literal = written.strip("`")
        default = field.default
        if isinstance(default, Path):
            assert Path(literal) == default, variable
        elif isinstance(default, bool):
            assert literal == str(default).lower(), variable
        else:
            assert type(default)(literal) == default, variable


def _leaves(group: Any, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every command that runs (not a group), by its words on the command line."""
    found: dict[str, Any] = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found |= _leaves(command, (*path, name))
        else:
            found[" ".join((*path, name))] = command
    return found


def test_readme_command_table_names_only_real_options_and_every_command() -> None:
    """An option README's table shows must be one its command takes; each command must be in
    the section (a sub-command of a row may be listed after a `/`, as `models list / promote`)."""
    leaves = _leaves(typer.main.get_command(app))
    section = _section("Command line")
    cells = [cell.removeprefix("defects ") for cell in _first_cells(section)]
    assert len(cells) >= 12
    checked = 0
    for cell in cells:
        words = cell.split()
        path = next(
            " ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in leaves
        )  # (StopIteration: a row of no command)
        options = {opt for p in leaves[path].params for opt in (*p.opts, *p.secondary_opts)}
        for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", cell):
            assert option in options, f"`defects {path}` has no {option}"
            checked += 1
    assert checked >= 30
    for path in leaves:
        group, _, name = path.rpartition(" ")
        listed = f"`defects {path}" in section or f"`{path}`" in section
        in_group_row = any(c.startswith(f"{group} ") and f"/ {name}" in c for c in cells)
        assert listed or in_group_row, f"`defects {path}` is not in README's Command line"


def test_readme_says_a_count_of_boxes_left_out_is_missing_for_every_earlier_verdict() -> None:
    """Migration 0011 leaves every verdict recorded before it without a count, tiled or whole
    (`test_the_boxes_left_out_migration_goes_up_and_down_and_keeps_the_verdicts`). README said
    only a part judged whole went without one, so the tiled verdicts of a database upgraded
    from an earlier release read, in the feed and the History CSV, as errors or as a count
    kept and lost."""
    said = [
        sentence
        for sentence in re.split(r"[;(]", " ".join(README.split()))
        if "before the count was kept" in sentence
    ]
    assert len(said) >= 2  # (the results feed's field and the History CSV's column)
    for sentence in said:
        assert "judged whole by" not in sentence and "in tiles" in sentence, sentence


def test_readme_quotes_the_tiled_strips_figures_its_results_file_holds() -> None:
    """README's figures of NEU-DET strips judged in tiles stayed those measured before cut
    boxes were fused (344 found, "as many as the images judged one by one"), while the code
    found 285: each figure it quotes must be the results file's."""
    results = Path(__file__).parents[1] / "bench" / "results"
    ways = json.loads((results / "tiled_neu_cpu.json").read_text())["ways"]
    before = json.loads((results / "tiled_neu_before_fused_cpu.json").read_text())["ways"]
    text = " ".join(_section("Large images: tiled inspection").split())
    tiled, alone, whole = ways["tiled"], ways["alone"], ways["whole"]
    assert f"it found {whole['boxes_found']} of the {whole['boxes']} labeled defects" in text
    assert (
        f"it found {tiled['boxes_found']}, and {tiled['images_with_no_detection']} images had "
        f"none, against {alone['boxes_found']} found ({alone['images_with_no_detection']} with "
        "none)"
    ) in text
    crazing = (tiled["per_class_recall"]["crazing"], alone["per_class_recall"]["crazing"])
    assert f"{crazing[0]:.0%} found in tiles, {crazing[1]:.0%} image by image" in text
    assert (
        f"the tiles found {before['tiled']['boxes_found']}, "
        f"{before['tiled']['images_with_no_detection']} image with none"
    ) in text
    medians = [round(ways[w]["wall_seconds_per_strip_median"] * 1000) for w in ways]
    assert (
        f"a median {medians[1]} ms of wall time tiled against {medians[0]} ms whole, and "
        f"{medians[2]} ms for its nine images"
    ) in text


def test_readme_command_table_gives_each_options_default_as_its_help_does() -> None:
    """A value README's table writes after an option (`[--epochs 100]`, `--split val`) reads as
    its default: it must be the one the command falls back to, where the command has one (one
    said in words, as `--model`'s, is left to the help)."""
    leaves = _leaves(typer.main.get_command(app))
    checked = 0
    for cell in _first_cells(_section("Command line")):
        words = cell.removeprefix("defects ").split()
        path = next(" ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in leaves)
        params = {opt: p for p in leaves[path].params for opt in p.opts}
        for option, value in re.findall(
            r"(--[a-z][a-z0-9-]*) ([a-z0-9][a-z0-9.-]*)(?=[\] ]|$)", cell
        ):
            default = params[option].default
            if default is None:
                continue
            assert str(default) == value, f"`defects {path} {option}` defaults to {default}"
            checked += 1
    assert checked >= 6


def test_readme_gives_the_login_rules_the_accounts_code_keeps() -> None:
    """README's Accounts section and the users row quote the numbers db/accounts.py enforces:
    a change to either must show in the other."""
    from dashboard.auth import COOKIE
    from db.accounts import LOCK_SECONDS, LOGIN_HOURS, MAX_FAILED_LOGINS, MIN_PASSWORD_LENGTH

    accounts = " ".join(_section("Accounts").split())
    assert f"after {MAX_FAILED_LOGINS} wrong tries in a row" in accounts
    assert f"that name waits {LOCK_SECONDS} s" in accounts
    assert f"for {LOGIN_HOURS} hours" in accounts
    assert f"`{COOKIE}_PORT`" in accounts
    commands = " ".join(_section("Command line").split())
    assert f"at least {MIN_PASSWORD_LENGTH} characters" in commands


def test_readme_says_what_the_sqlite_migration_lock_file_is(tmp_path: Path) -> None:
    """`defects db upgrade` leaves an empty `defects.db.migrating` in the data folder, which
    README's backup and moving section did not name: a user could not tell it from a database
    left half-upgraded, nor whether to back it up."""
    from db.migrate import MIGRATION_LOCK_SUFFIX, upgrade

    upgrade(f"sqlite:///{tmp_path / 'defects.db'}")
    left = tmp_path / f"defects.db{MIGRATION_LOCK_SUFFIX}"
    assert left.is_file() and left.stat().st_size == 0  # (as README says: empty, and it stays)
    backing_up = " ".join(_section("Backing up, moving and pruning").split())
    lock = f"`defects.db{MIGRATION_LOCK_SUFFIX}`"
    assert f"The empty {lock} beside a SQLite database is the lock" in backing_up
    assert "leave it out of backups" in backing_up
