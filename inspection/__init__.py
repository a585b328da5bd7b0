"""Inspection core: detector, classifier, engine, verdict and batch inspection.

Importing the package prepares torch, torchvision and ultralytics for this machine (see
`inspection.runtime`), so every module of the product imports it before those libraries.
"""

from inspection.runtime import prepare_runtime as _prepare_runtime
from inspection.settings import get_settings as _get_settings

_prepare_runtime(_get_settings().ultralytics_config_dir, _get_settings().runs_dir)
