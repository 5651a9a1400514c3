"""Optional features and the pip extras that install them (``[project.optional-dependencies]``).

The service itself needs none of them. ``report``: matplotlib, for the charts of
``vcf-cds report --format html``. ``postgresql``: psycopg, the driver of a PostgreSQL
``DATABASE_URL``. Their modules are imported only where the feature is used; a missing one
raises :class:`MissingExtraError`, whose message names the extra to install.
"""

from __future__ import annotations

import importlib.util

__all__ = ["MissingExtraError", "require"]

DISTRIBUTION = "vcf-cds-hooks"


class MissingExtraError(Exception):
    """A feature whose optional packages are not installed.

    Attributes:
        extra: the pip extra that installs them (``report``, ``postgresql``).
    """

    def __init__(self, extra: str, feature: str) -> None:
        super().__init__(f"{feature} needs the '{extra}' extra, which is not installed: "
                         f"pip install '{DISTRIBUTION}[{extra}]'")
        self.extra = extra


def require(module: str, *, extra: str, feature: str) -> None:
    """Raise :class:`MissingExtraError` unless ``module`` (e.g. ``psycopg``) can be imported;
    imports nothing itself."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None
        found = False
    if not found:
        raise MissingExtraError(extra, feature)
