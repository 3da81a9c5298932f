"""The command line, `python -m pimoe <command>`: one module per subcommand; the engine never imports this package."""

from pimoe.cli.commands import COMMANDS, main

__all__ = ["COMMANDS", "main"]
