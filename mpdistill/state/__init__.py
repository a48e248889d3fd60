"""Persistent state of a run: checkpoint, resume against the output, stop file, crash-safe file helpers.

May import errors and outputs.
"""
