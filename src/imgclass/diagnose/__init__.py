"""Data diagnosis: label issues, duplicates and train/test leakage, outliers and image properties, error slices,
human labels, tied to a model's scores (``imgclass diagnose``).

Each check is a module registering a :class:`~imgclass.diagnose.base.Check` in ``CHECKS``; ``diagnose()`` runs
them over one shared context (probabilities and features computed once) and writes results.json, report.html and
issues.csv.
"""

import importlib

from .base import CHECKS, Check, DiagnoseContext, Flag, register_check

# the modules that register checks (each imports only what it needs at run time)
for _m in ("human", "check_labels", "check_duplicates", "check_images", "check_slices"):
    try:
        importlib.import_module(f"{__name__}.{_m}")
    except ModuleNotFoundError as _e:  # a check module not written yet
        if _e.name != f"{__name__}.{_m}":
            raise


def diagnose(*args, **kwargs):
    from .run import diagnose as _run

    return _run(*args, **kwargs)


diagnose.__doc__ = "Run data checks; see :func:`imgclass.diagnose.run.diagnose`."

__all__ = ["CHECKS", "Check", "DiagnoseContext", "Flag", "diagnose", "register_check"]
