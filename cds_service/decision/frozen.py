"""Copies of frozen dataclass instances, for the hot path of a long record.

``dataclasses.replace`` builds a copy through the frozen ``__init__``, one
``object.__setattr__`` per field after walking ``fields()``: run for every Condition of a
record with thousands of them (and every finding of every report), that was most of the
cost of reading it. A copy of the instance's ``__dict__`` gives the same instance for a
fraction of the time.
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def replaced(template: Any, cls: type[T], /, **changes: Any) -> T:
    """An instance of ``cls`` with ``template``'s fields and ``changes``: what
    ``dataclasses.replace(template, **changes)`` gives when ``cls`` is ``type(template)``;
    ``cls`` may be a subclass that adds fields, all of them then given in ``changes``.

    Only for plain frozen dataclasses without ``__slots__``, ``__post_init__`` or
    ``InitVar``: no ``__init__`` runs, so nothing checks the field names or values.
    """
    copy = object.__new__(cls)
    object.__setattr__(copy, "__dict__", {**template.__dict__, **changes})
    return copy
