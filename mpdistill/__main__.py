"""`python -m mpdistill …` is the `mpdistill` command."""
import sys

from .cli import main

sys.exit(main())
