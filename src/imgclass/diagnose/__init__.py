"""Data diagnosis: label issues, duplicates and train/test leakage, outliers and image properties, error slices,
human labels, tied to a model's scores (``imgclass diagnose``).

Each check is a module registering a :class:`~imgclass.diagnose.base.Check` in ``CHECKS``; ``diagnose()`` runs
them over one shared context (probabilities and features computed once) and writes results.json, report.html and
issues.csv.
"""

from . import check_duplicates, check_images, check_labels, check_slices, human  # noqa: F401 - they register checks
from .base import CHECKS, Check, DiagnoseContext, Flag, register_check


def diagnose(*args, **kwargs):
    from .run import diagnose as _run

    return _run(*args, **kwargs)


diagnose.__doc__ = "Run data checks; see :func:`imgclass.diagnose.run.diagnose`."

__all__ = ["CHECKS", "Check", "DiagnoseContext", "Flag", "diagnose", "register_check"]
