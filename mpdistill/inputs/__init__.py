"""What comes in: the `Source` protocol and its sources (JSONL and Batch API lines, numbered
files, Python rows, follow mode), the rows they yield (`rows.py`), and images.

May import config, errors, lines, and outputs.identity (the one row-id rule).
"""
