"""Result paths checked before a long command starts (`pimoe.output_paths.writable_destination`)."""

from __future__ import annotations

import pytest

from pimoe.output_paths import writable_destination


def test_a_good_path_gets_its_folder_created(tmp_path) -> None:
    path = writable_destination(tmp_path / "new" / "deeper" / "m.safetensors", "checkpoint", ".safetensors")
    assert path.parent.is_dir() and not path.exists()


@pytest.mark.parametrize(("name", "suffix", "message"), [
    ("m.pt", ".safetensors", "checkpoint path must end in .safetensors, got"),
    ("blocker/m.safetensors", ".safetensors", "cannot create the checkpoint.s folder .*blocker is a file"),
    ("folder.safetensors", ".safetensors", "is a folder"),
    ("folder.safetensors", None, "is a folder"),
])
def test_bad_paths_are_named(tmp_path, name, suffix, message) -> None:
    (tmp_path / "blocker").write_text("a file where a folder would go")
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(ValueError, match=message):
        writable_destination(tmp_path / name, "checkpoint", suffix)


def test_a_folder_the_user_cannot_write_is_refused(tmp_path, monkeypatch) -> None:
    # NOTE: os.access stands in for a read-only folder, which this machine's root user would write anyway
    import pimoe.output_paths as output_paths

    monkeypatch.setattr(output_paths.os, "access", lambda path, mode: False)
    with pytest.raises(ValueError, match="cannot write to the report's folder"):
        writable_destination(tmp_path / "r.json", "report")


def test_a_benchmarks_json_argument_fails_when_the_command_line_is_read(tmp_path, capsys) -> None:
    import argparse

    from pimoe.output_paths import output_file

    (tmp_path / "blocker").write_text("a file where a folder would go")
    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--json", type=output_file("results file"))
    assert parser.parse_args(["--json", str(tmp_path / "out" / "r.json")]).json == tmp_path / "out" / "r.json"
    with pytest.raises(SystemExit):
        parser.parse_args(["--json", str(tmp_path / "blocker" / "r.json")])
    assert "argument --json: cannot create the results file's folder" in capsys.readouterr().err
