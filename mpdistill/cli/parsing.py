"""The argparse flavour of every command: usage errors exit 2 with one clear line, no abbreviations."""
from __future__ import annotations

import argparse

from ..exitcodes import EXIT_OK, EXIT_USAGE


class Parser(argparse.ArgumentParser):
    """argparse that exits with our usage code, 2, and one clear line, and never guesses a flag.

    Abbreviations are off: `--mode threading` must be an unknown flag, not `--model threading`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """The parsed flags, or the exit code argparse chose (2 for a usage error, 0 for --help)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else EXIT_OK
