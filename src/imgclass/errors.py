"""The toolkit's error types: what the user did wrong (exit 2) versus what went wrong with data or a run (exit 1).

Every error the toolkit raises on purpose derives from :class:`ImgclassError`, so the command line can print it
as one line; anything else that escapes is a bug and is reported as one (``--debug`` shows the traceback).
"""

from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["ImgclassError", "UsageError", "ParameterError", "UnknownNameError", "unknown_name"]


class ImgclassError(Exception):
    """Base class of the errors the toolkit raises on purpose (data, models, assets, runs): exit code 1."""


class UsageError(ImgclassError, ValueError):
    """The call is wrong: a bad value, an impossible setting, a malformed spec (exit code 2)."""


class ParameterError(UsageError, TypeError):
    """A parameter that does not exist (also a ``TypeError``, as Python reports unknown keyword arguments)."""


class UnknownNameError(UsageError, KeyError):
    """A name that no registry knows (also a ``KeyError``); the message offers close matches and the full list."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def unknown_name(kind: str, name: object, known: Iterable[str], *, extra: str = "") -> UnknownNameError:
    """``unknown attack 'pgdd'; did you mean 'pgd'? known attacks: apgd-ce, ..., pgd`` as an error to raise."""
    known = sorted(str(k) for k in known)
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    plural = kind if kind.endswith("s") else (kind[:-1] + "ies" if kind.endswith("y") else kind + "s")
    listed = ", ".join(known) if known else "none"
    return UnknownNameError(f"unknown {kind} {str(name)!r}{hint}; known {plural}: {listed}{extra}")
