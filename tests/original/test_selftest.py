"""run_all_tests: runs pytest in a subprocess and reports its exit code."""

from __future__ import annotations

import pytest

from pimoe.original.selftest import default_tests_dir, run_all_tests


def test_run_all_tests_reports_pass_and_fail(tmp_path) -> None:
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    assert 1 + 1 == 2\n")
    assert run_all_tests(["-q", "-p", "no:cacheprovider"], tests_dir=tmp_path) == 0
    (tmp_path / "test_bad.py").write_text("def test_bad():\n    assert 1 + 1 == 3\n")
    assert run_all_tests(["-q", "-p", "no:cacheprovider"], tests_dir=tmp_path) == 1


def test_run_all_tests_rejects_a_missing_directory(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        run_all_tests(tests_dir=tmp_path / "nowhere")


def test_default_tests_dir_is_this_suite() -> None:
    assert default_tests_dir() == __import__("pathlib").Path(__file__).resolve().parents[1]
