#!/usr/bin/env python3
"""List or clear mpdistill checkpoints: `python test_checkpoint.py`, `… clear`, `… clear NAME`."""
import sys

from mpdistill.cli.main import program

if __name__ == "__main__":
    program(["checkpoints", *sys.argv[1:]], prog="test_checkpoint.py")
