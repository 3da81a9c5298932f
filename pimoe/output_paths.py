"""Where a long command writes its result, checked before the work starts: a result found unwritable only at the end
(a wrong suffix, a file where a folder should be, a read-only folder) would cost the whole run."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["output_file", "writable_destination"]


def writable_destination(path: str | Path, what: str, suffix: str | None = None) -> Path:
    """`path` checked as the file a command will write `what` to: `suffix` where given, not a folder, its folder
    created here and writable. ValueError naming the problem otherwise."""
    path = Path(path)
    if suffix is not None and path.suffix != suffix:
        raise ValueError(f"{what} path must end in {suffix}, got {path}")
    if path.is_dir():
        raise ValueError(f"{what} path {path} is a folder; name the file inside it")
    blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"cannot create the {what}'s folder {path.parent}: {blocker} is a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the {what}'s folder {path.parent}: {error.strerror or error}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to the {what}'s folder {path.parent}")
    return path


def output_file(what: str) -> Callable[[str], Path]:
    """An argparse `type` for a result path: checked when the command line is read (`writable_destination`), so a
    benchmark's --json cannot fail after its measurements."""
    def check(value: str) -> Path:
        try:
            return writable_destination(value, what)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return check
