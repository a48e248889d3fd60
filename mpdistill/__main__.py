"""`python -m mpdistill …` is the `mpdistill` command."""
from .cli import program

program()
