"""Command-line entry points; see pimoe.cli."""
