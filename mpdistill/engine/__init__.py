"""The hot path: manager loop, worker pool and workers, the writer, the key pool and its rate
primitives, retry decisions.

May import config, errors, inputs, outputs, provider, state, report.
"""
