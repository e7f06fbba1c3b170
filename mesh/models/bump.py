"""The name and manifest of a model's next version, made from one it has (``mesh models bump``).

Versions of a model share one count whatever their tier, as a model repository numbers them
(``1`` for the cloud, ``2`` for the edge): the next version takes the count past the highest
its model has, keeping the rest of the name it is made from (``1-edge-int8`` becomes
``2-edge-int8`` when ``1-cloud`` is the highest). Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from mesh.errors import InvalidArgumentError

_LEADING = re.compile(r"^(\d+)(.*)$")
_TRAILING = re.compile(r"^(.*?)(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")


def check_version_name(version: str) -> str:
    """Letters, digits, ``_``, ``-`` and inner dots, at most 64: a version names a folder."""
    if len(version) > 64 or not _NAME.match(version):
        raise InvalidArgumentError(
            f"version {version[:70]!r} is not a version name (letters, digits, '_', '-', dots "
            "inside; at most 64)"
        )
    return version


def next_version(source: str, existing: Iterable[str]) -> str:
    """The version after every one of ``existing``, named like ``source``."""
    taken = set(existing)
    counts = [int(m.group(1)) for v in taken | {source} if (m := _LEADING.match(v))]
    leading = _LEADING.match(source)
    if leading is not None:
        count, rest = max(counts) + 1, leading.group(2)
        while f"{count}{rest}" in taken:
            count += 1
        return check_version_name(f"{count}{rest}")
    trailing = _TRAILING.match(source)
    stem, count = (trailing.group(1), int(trailing.group(2)) + 1) if trailing else (source, 2)
    sep = "" if trailing else "-"
    while f"{stem}{sep}{count}" in taken:
        count += 1
    return check_version_name(f"{stem}{sep}{count}")


def bumped(manifest: dict[str, Any], version: str) -> dict[str, Any]:
    """``manifest`` as version ``version``: the same artifact and everything else."""
    return {**manifest, "version": check_version_name(version)}
