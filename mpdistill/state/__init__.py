"""Persistent state of a run: checkpoint (and the durable row counts it holds), resume against
the output, stop file, response cache, crash-safe file helpers.

May import errors, exitcodes, outputs, provider's answer type, and report's status-file reader
(the stop file is found beside the status file).
"""
