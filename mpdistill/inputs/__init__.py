"""What comes in: row sources (JSONL, Batch API lines, numbered files, follow) and images.

May import config and errors.
"""
