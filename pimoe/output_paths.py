"""Where a long command writes its result, checked before the work starts: a result found unwritable only at the end
(a wrong suffix, a file where a folder should be, a read-only folder) would cost the whole run."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["writable_destination"]


def writable_destination(path: str | Path, what: str, suffix: str | None = None) -> Path:
    """`path` checked as the file a command will write `what` to: `suffix` where given, not a folder, its folder
    created here and writable. ValueError naming the problem otherwise."""
    path = Path(path)
    if suffix is not None and path.suffix != suffix:
        raise ValueError(f"{what} path must end in {suffix}, got {path}")
    if path.is_dir():
        raise ValueError(f"{what} path {path} is a folder; name the file inside it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the {what}'s folder {path.parent}: {error.strerror or error}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to the {what}'s folder {path.parent}")
    return path
