"""The provider Batch API as a run mode (`--via batch`): pack rows into batch input files, upload,
create, poll, download, and write every answer through the run's one writer, exactly once.

May import config, inputs, outputs, state, provider, report and engine's writer/retry/request
helpers; the online manager loop (engine.runner) is not used: batches need no worker pool.
"""
