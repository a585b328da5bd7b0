"""Inspection core: detector, classifier, engine, verdict and batch inspection.

Importing the package prepares torch, torchvision and ultralytics for this machine (see
`inspection.runtime`), so every module of the product imports it before those libraries. It
imports none of them itself: torch comes with the first module that needs a model.
"""

import tempfile as _tempfile
from pathlib import Path as _Path

from inspection.runtime import prepare_runtime as _prepare_runtime
from inspection.settings import SettingsError as _SettingsError
from inspection.settings import get_settings as _get_settings

try:
    _prepare_runtime(_get_settings().ultralytics_config_dir, _get_settings().runs_dir)
except (_SettingsError, OSError):
    # A bad DEFECTS_* value, or a data folder that cannot be made, is reported by whoever asks
    # for the settings or the database next (the command line in one line, the dashboard on its
    # page), not by a traceback at import. Until then the libraries are still prepared,
    # offline, in a scratch folder outside the data directory.
    _scratch = _Path(_tempfile.gettempdir()) / "defects-unconfigured"
    _prepare_runtime(_scratch / "ultralytics", _scratch / "runs")
