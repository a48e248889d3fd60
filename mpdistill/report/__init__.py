"""Counts turned into words: the status file, the terminal monitor, the end-of-run summary.

May import state.
"""
