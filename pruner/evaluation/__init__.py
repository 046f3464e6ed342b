"""`subcoder eval`: held-out perplexity, next-line completion, HumanEval-X by execution, and the study.

Modules: `sandbox` (child processes with limits), `decode` (batched greedy generation), `perplexity`,
`nextline`, `humaneval` (HumanEval-X, single-line and infilling tasks), `runner` (one model, many
metrics, resumable), `study` (the paper's experiment on our presets), `report` (tables, plots,
docs/RESULTS.md), `cli`.
"""
