"""Errors that carry a message meant for the person at the station, not a traceback."""

from __future__ import annotations

from pathlib import Path


class UserError(ValueError):
    """Something the user asked for cannot be done as asked; the message says why and what to do."""


class UnloadableExport(UserError):
    """An ONNX file ONNX Runtime cannot load (damaged, partly written). The backend does not
    know whose export it is: `naming` says the way on with the version's name where the
    caller knows it (the hint said `defects export VERSION`, a placeholder to fill in)."""

    def __init__(self, onnx_path: Path, reason: str, version: str | None = None) -> None:
        self.onnx_path, self.reason = onnx_path, reason
        export = f"defects export {version or 'VERSION'}"
        super().__init__(
            f"cannot load the ONNX model {onnx_path}: {reason}. A damaged or partly written "
            f"export: export it again (`{export}`), or judge with the weights themselves "
            "(--backend pytorch)"
        )

    def naming(self, version: str) -> UnloadableExport:
        return UnloadableExport(self.onnx_path, self.reason, version)


class Stopped(KeyboardInterrupt):
    """A Ctrl-C (or SIGTERM) whose command has already said what became of its work (a
    training's resume hint): the command line ends it with 130 and adds nothing, as a stopped
    batch's "stopped" line stands alone (a training's was followed by "interrupted")."""


class StorageError(UserError):
    """The image store cannot keep a part's bytes (a full or read-only disk): the run stops,
    since judging parts whose images are not kept would lose them; what was written stays."""


def _is_damaged_file(exc: BaseException) -> bool:
    """Whether torch's reading of a checkpoint failed on the bytes themselves: a zip cut
    short (RuntimeError from its PytorchStreamReader), an empty file, or bytes no pickle."""
    if isinstance(exc, RuntimeError):
        return "PytorchStreamReader" in str(exc)
    return isinstance(exc, EOFError) or type(exc).__name__ == "UnpicklingError"


def checkpoint_reason(exc: BaseException) -> str:
    """Why a checkpoint could not be loaded, in a few words for a one-line refusal. torch
    follows a damaged file's error with a paragraph of guesses, and ultralytics wraps that
    paragraph and its own advice (download an official model) in a sentence of its own: a
    refusal that quoted it ran to several lines. A damaged file is said as one, with the
    first sentence of the error that started it; any other error by its own first line."""
    chain: list[BaseException] = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    damaged = next((error for error in chain if _is_damaged_file(error)), None)
    if damaged is None:
        return (str(exc).splitlines() or [type(exc).__name__])[0]
    detail = first_sentence(damaged) or "it ends early"
    return f"not a readable checkpoint, damaged or cut short ({detail})"


def first_sentence(exc: BaseException) -> str:
    """An error's first sentence ("" for none): torch follows a broken file's with a paragraph
    of guesses."""
    return (str(exc).splitlines() or [""])[0].split(". ")[0].rstrip(".").strip()
