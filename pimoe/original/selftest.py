"""`pimoe.run_all_tests()`: the description's test entry point, which runs this project's pytest suite."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["default_tests_dir", "run_all_tests"]


def default_tests_dir() -> Path:
    """The `tests/` folder next to the `pimoe` package (a source checkout; wheels do not ship the tests)."""
    return Path(__file__).resolve().parents[2] / "tests"


def run_all_tests(pytest_args: Sequence[str] = ("-q",), tests_dir: str | Path | None = None) -> int:
    """Run `python -m pytest <tests_dir> <pytest_args>` in a subprocess; returns pytest's exit code (0: all passed).

    A subprocess, so the suite gets a clean interpreter (its own torch threads, no state from the caller).
    """
    path = Path(tests_dir) if tests_dir is not None else default_tests_dir()
    if not path.exists():
        raise ValueError(f"tests directory {path} does not exist (run from a source checkout, or pass tests_dir)")
    command = [sys.executable, "-m", "pytest", str(path), *pytest_args]
    return subprocess.call(command, cwd=str(path.parent if path.is_dir() else path.parent))
