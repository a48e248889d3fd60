#!/usr/bin/env python3
"""Run mpdistill: `python run_multiprocess.py -p 32`, `--status`, `--validate`, `--stop` (see --help)."""
import sys

from mpdistill.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="run_multiprocess.py"))
