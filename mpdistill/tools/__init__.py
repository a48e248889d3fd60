"""Offline tools over files: validate, export, split/merge, task files.

May import outputs, inputs, state, and the engine through `mpdistill.api`.
"""
