"""What goes out: the output and error line format, reading keys and ids back, Batch output lines.

May import errors, inputs (the rows it serialises) and provider (the answers it serialises).
"""
