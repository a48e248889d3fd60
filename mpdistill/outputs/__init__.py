"""What goes out: the output and error line format, reading keys and ids back, Batch output lines.

May import errors (and the records of inputs/provider it serialises).
"""
