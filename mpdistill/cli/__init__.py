"""The command line: every parser, flags → config → library call → one exit-code table.

May import everything; nothing in the package imports it.
"""

from .main import program

__all__ = ["program"]
