"""Offline tools over files: validate, export, split/merge, task files.

May import config, errors, exitcodes, lines, inputs, outputs, provider, state, and the engine only
through `mpdistill.api` / `mpdistill.plan` (cluster tasks through `cluster`). Their commands'
parsers live in `cli/`.
"""
