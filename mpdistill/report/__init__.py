"""Counts turned into words: the status file, the terminal monitor, the end-of-run summary, and
the observers of each request (counters, per-endpoint logs, Prometheus metrics, OpenTelemetry spans).

May import state.
"""
