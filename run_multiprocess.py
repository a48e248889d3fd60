#!/usr/bin/env python3
"""Run mpdistill: `python run_multiprocess.py -p 32`, `--status`, `--validate`, `--stop` (see --help)."""
import sys

from mpdistill.cli.main import program

if __name__ == "__main__":
    program(sys.argv[1:], prog="run_multiprocess.py")
