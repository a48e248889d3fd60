"""`python -m mpdistill …` is the `mpdistill` command."""
from .cli.main import program

program()
