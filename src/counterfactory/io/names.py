"""Names read from files (damage types, categories) that become parts of paths: the one validator."""

from __future__ import annotations

import re

from ..errors import InputError

_SAFE = re.compile(r"[A-Za-z0-9_.-]+")


def check_path_name(name: object, argument: str) -> str:
    """Return ``name`` if it is safe as one path component (``[A-Za-z0-9_.-]+``, not ``.`` or ``..``), else raise
    :class:`InputError` naming ``argument`` and the value."""
    if not isinstance(name, str) or not _SAFE.fullmatch(name) or name in (".", ".."):
        raise InputError(f"{argument}={name!r}: a name made of letters, digits, '_', '.', '-' (not '.' or '..'), "
                         "since it becomes a folder or file name")
    return name
