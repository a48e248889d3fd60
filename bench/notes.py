"""What limits each figure when it misses its target, and what would move it (from profiles).

Keys are prefixes of `Figure.key`; report.py prints the matching entry under every missed target.
"""
from __future__ import annotations

MISSES: dict[str, dict[str, str]] = {}
