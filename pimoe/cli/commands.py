"""`python -m pimoe <command>`: one subcommand per module, each registering its own arguments.

A command module exposes `configure_parser(parser)` and `main(args) -> int`. Modules are imported only when their
command runs, so `python -m pimoe bench` does not pay for the language model's imports.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("pimoe.cli.bench", "time the PiMoE layer against the loop reference and a dense FFN"),
    "train": ("pimoe.cli.train", "train the tiny PiMoE language model and save a safetensors checkpoint"),
    "demo": ("pimoe.cli.demo", "run the original description's scenarios end to end with measured results"),
    "export": ("pimoe.cli.export", "export a PiMoE layer or model to ONNX"),
    "eval-compute": ("pimoe.cli.eval_compute", "evaluate exact computation hand-off against plain generation"),
    "inspect": ("pimoe.cli.inspect", "route a text through a Hugging Face MoE checkpoint: per-layer summary, JSON trace"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {name: spec for name, spec in COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pimoe", description="PiMoE engine command line")
    subparsers = parser.add_subparsers(dest="command", required=True)
    available = _available()
    modules = {}
    argv = sys.argv[1:] if argv is None else argv
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in available.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            modules[name] = importlib.import_module(module_name)
            modules[name].configure_parser(sub)
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].main(args) or 0)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
