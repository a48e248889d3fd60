"""The hot path of an online run: `rounds` runs a plan, `runner` is the manager loop (rows in via
`intake`, a `backlog` of ready and retrying items, the one in-flight table `flights`, `outcomes`
judged by `retry.decide` with `health`'s evidence, `stopping`, `outage`), the worker `pool` (its
processes made by `forked`) and worker modes, the `writer`, the `keypool` with its rate
primitives, and the `view` of its facts.

May import config, errors, lines, inputs, outputs, provider, state, and report's observer
interface (`report.observe`); the Batch API runner (`batch`) is chosen by `rounds`, lazily.
"""
