"""The one exit-code table of every command (the CLI maps errors and results onto it).

    0  done: every row answered (validate: the file is sound; merge: nothing failed or missing)
    1  crashed, or a command could not do its job (nothing to stop, files not writable)
    2  usage or config error (another run holds this output, this output belongs to another job)
    3  finished with failed rows (merge: rows failed or are missing)
    4  --validate repaired the file
    5  the run finished but its --on-finish command failed
    75 run-level fault (every key rejected, outage past --max-outage, disk full): checkpoint saved, rerun
    130 interrupted (Ctrl-C, SIGTERM): checkpoint saved, rerun
"""

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_USAGE = 2
EXIT_FAILED_ROWS = 3
EXIT_REPAIRED = 4
EXIT_ON_FINISH_FAILED = 5
EXIT_ABORTED = 75
EXIT_INTERRUPTED = 130

EXIT_FAILED = EXIT_CRASH            # a command that could not do its job (no run to stop, cannot write)
EXIT_INCOMPLETE = EXIT_FAILED_ROWS  # merge: rows failed or are missing
