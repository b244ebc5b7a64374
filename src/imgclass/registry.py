"""One registry type for everything looked up by name: probes, attacks, methods, corruptions, sources, zoo
entries, architectures, assets.

A :class:`Registry` is a dict that refuses to overwrite an entry silently and answers an unknown name with the
close matches and the full list (:class:`~imgclass.errors.UnknownNameError`, a ``KeyError``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Generic, Iterator, TypeVar

from .errors import unknown_name

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """``name -> entry``; ``kind`` names the entries in messages (``"probe"``, ``"attack"``...)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def __setitem__(self, name: str, value: T) -> None:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({dict.__getitem__(self, name)!r} and "
                             f"{value!r}); use Registry.replace to overwrite on purpose")
        super().__setitem__(name, value)

    def __getitem__(self, name: str) -> T:
        try:
            return super().__getitem__(name)
        except KeyError:
            raise unknown_name(self.kind, name, self.keys()) from None
        except TypeError:  # unhashable
            raise unknown_name(self.kind, name, self.keys()) from None

    def register(self, name: str, value: T) -> T:
        self[name] = value
        return value

    def replace(self, name: str, value: T) -> T:
        """Overwrite (or add) an entry on purpose, e.g. a test's stand-in."""
        super().__setitem__(name, value)
        return value

    @contextmanager
    def override(self, name: str, value: T) -> Iterator[T]:
        """Within the ``with`` block ``name`` means ``value`` (a test's stand-in); the old entry comes back after."""
        missing = object()
        old = dict.get(self, name, missing)
        super().__setitem__(name, value)
        try:
            yield value
        finally:
            if old is missing:
                super().pop(name, None)
            else:
                super().__setitem__(name, old)

    def decorator(self, name: str, wrap: Callable[[object], T] | None = None):
        """``@REG.decorator("name")``: register the decorated object (or ``wrap(obj)``) and return the object."""

        def deco(obj):
            self[name] = wrap(obj) if wrap is not None else obj
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(self.keys())

    def __iter__(self) -> Iterator[str]:
        return super().__iter__()

    def update(self, *args, **kwargs) -> None:  # through __setitem__, so overwrites are refused here too
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def setdefault(self, name, default=None):
        if name not in self:
            self[name] = default
        return dict.__getitem__(self, name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self.keys())})"
