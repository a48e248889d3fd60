"""What comes in: the `Source` protocol and its sources (JSONL and Batch API lines, numbered
files, Python rows, follow mode), and images.

May import config, errors and lines.
"""
