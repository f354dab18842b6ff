"""accelerate: a real 2-process CPU (gloo) DPO run keeps ranks in sync and reproduces the single-process loss
curve with the same global batch; every launch config in recipes/accelerate/ loads with accelerate's loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines import dpo
from reins.config import from_dict
from tests.helpers import launch_two_cpu_ranks
from tests.pipelines.helpers import stage_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r and "grad_norm" in r]


def test_two_process_dpo_matches_single_process(tmp_path):
    keys = {"max_steps": 3, "learning_rate": 3e-3, "max_eval_samples": 4}
    two = stage_overrides(tmp_path / "two", grad_accum=1, **keys)
    proc = launch_two_cpu_ranks(str(ROOT / "tests" / "pipelines" / "ddp_worker.py"), json.dumps(two), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "two" / "params_rank0.pt")
    r1 = torch.load(tmp_path / "two" / "params_rank1.pt")
    assert r0["world"] == r1["world"] == 2  # really two data-parallel ranks, not two rank-0 copies
    assert torch.equal(r0["flat"], r1["flat"])

    # Same global batch (8) in one process: 2 accumulation micro-batches of 4 instead of 2 ranks x 4.
    one = from_dict(dpo.Config, stage_overrides(tmp_path / "one", grad_accum=2, **keys))
    dpo.train(one)
    a, b = _losses(tmp_path / "two" / "run"), _losses(tmp_path / "one" / "run")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3]
    for (_, la), (_, lb) in zip(a, b):
        assert la == pytest.approx(lb, abs=1e-4)
    # ... and the same parameters at the end.
    from pipelines.models import load_causal_lm, load_tokenizer

    cfg1 = from_dict(dpo.Config, {**stage_overrides(tmp_path), "model": str(tmp_path / "one" / "run" / "model")})
    m1 = load_causal_lm(cfg1, load_tokenizer(cfg1))
    flat1 = torch.cat([p.detach().reshape(-1) for p in m1.parameters()])
    assert torch.allclose(flat1, r0["flat"], atol=1e-5)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_accelerate_configs_load_with_accelerates_loader(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 2 and cfg.num_machines == 1
    if "cpu" in path.name:
        # MULTI_CPU would silently start one process with the simple launcher (recipes/accelerate/README.md).
        assert cfg.use_cpu is True and cfg.distributed_type.value == "MULTI_GPU"
    if "zero" in path.name:
        assert cfg.distributed_type.value == "DEEPSPEED"
        assert cfg.deepspeed_config["zero_stage"] == int(path.stem[-1])
    if "fsdp" in path.name:
        assert cfg.distributed_type.value == "FSDP"


def test_accelerate_loader_rejects_unknown_keys(tmp_path):
    """The loader really validates (so the test above can fail): a misspelt key is an error."""
    from accelerate.commands.config.config_args import load_config_from_file

    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS[0]).read_text() + "num_proceses: 2\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_config_from_file(str(bad))
