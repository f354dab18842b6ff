"""reins: preference fine-tuning of language models and offline RL on one shared policy-gradient core.

This package holds what every stage shares that is not math: how a stage is entered (`reins.entry`: the
stage table and the shared `main`), dataclass configs loaded from YAML with `key=value` overrides
(`reins.config`), and the stage contract's run directory (`reins.runio`: config.yaml, metrics.json,
log.jsonl, atomic checkpoints, RNG state, finiteness checks). The math lives in `pgcore`; stages live in
`online`, `offline` and `pipelines`; the command line (`reins.cli`) sits above them all.
"""

__version__ = "0.1.0"
