"""Where the project's shipped folders are: beside the package in a checkout, inside it when
installed from a wheel (``pyproject.toml`` force-includes them as ``edged/_data``)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def shipped(name: str) -> Path:
    """The project's ``models`` or ``pipelines`` folder."""
    for candidate in (PACKAGE.parent / name, PACKAGE / "_data" / name):
        if candidate.is_dir():
            return candidate
    return PACKAGE.parent / name
