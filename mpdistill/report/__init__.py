"""Counts turned into words: the `reporter` hears the engine (requests, durable rows, ticks, round
ends) and alone writes the status file, draws the progress bar and builds the summary; the
terminal monitor; the observers of each request (counters, endpoint logs, metrics, traces).

May import config, errors, lines, logs and state; never engine (it gets plain facts: `RunView`).
"""
