"""`reins grpo` on long completions, end to end on the tiny toy policy: mask_truncated_completions, DAPO's soft
overlong penalty and GSPO's sequence-level ratio each change what the run computes (each test fails when its
option is ignored), bad values are one-line errors, and a run with them resumes exactly."""

from __future__ import annotations

import pytest
import yaml

from pipelines import grpo
from reins.config import from_dict
from reins.errors import NonFiniteError
from reins.runio import safe_torch_load
from tests.pipelines import grpo_rewards
from tests.pipelines.helpers import grpo_toy_cfg, grpo_train_rows

pytestmark = pytest.mark.usefixtures("reset_flaky")

QUICK = {"beta": 0.0, "max_steps": 1, "eval_prompts": "none", "learning_rate": 1e-2}


def _first_row(out, **kw) -> dict:
    grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out, **{**QUICK, **kw})))
    return grpo_train_rows(out)[0]


def test_mask_truncated_completions_leaves_cut_completions_out_of_the_loss(tmp_path):
    # The untrained toy policy almost never samples EOS within 4 tokens: every completion of the first rollout
    # is cut. Masked, nothing is left in the loss; unmasked, the same rollout gives a gradient.
    masked = _first_row(tmp_path / "masked", num_iterations=1, mask_truncated_completions=True)
    plain = _first_row(tmp_path / "plain", num_iterations=1)
    assert masked["completions/clipped_ratio"] == 1.0 == plain["completions/clipped_ratio"]
    assert masked["reward"] == plain["reward"] and masked["reward_std"] > 0   # same rollout, non-zero advantages
    assert masked["loss"] == 0.0 and masked["grad_norm"] == 0.0
    assert plain["loss"] != 0.0 and plain["grad_norm"] > 0.0


def test_soft_overlong_penalty_is_added_to_the_reward(tmp_path):
    # buffer = the whole budget (4 tokens): each completion loses 0.5 x its length / 4
    row = _first_row(tmp_path / "run", overlong_buffer_len=4, overlong_penalty=0.5)
    assert row["rewards/overlong_penalty/mean"] == pytest.approx(-0.5 * row["completions/mean_length"] / 4,
                                                                 abs=1e-12)
    assert row["rewards/overlong_penalty/mean"] < 0
    assert row["reward"] == pytest.approx(row["rewards/arithmetic/mean"] + 0.5 * row["rewards/flaky/mean"]
                                          + row["rewards/overlong_penalty/mean"], abs=1e-12)


def test_sequence_importance_sampling_changes_only_the_off_policy_passes(tmp_path):
    loss = {}
    for iters in (1, 2):
        for level in ("token", "sequence"):
            loss[iters, level] = _first_row(tmp_path / f"{level}{iters}", num_iterations=iters,
                                            importance_sampling_level=level)["loss"]
    # one pass: the ratio is exactly 1 either way (GSPO = GRPO on-policy); the second pass sees ratios != 1
    assert loss[1, "token"] == loss[1, "sequence"]
    assert abs(loss[2, "token"] - loss[2, "sequence"]) > 1e-7


@pytest.mark.parametrize("bad, message", [
    ({"overlong_buffer_len": 0}, r"overlong_buffer_len must be in \[1, generation.max_new_tokens=4\], got 0"),
    ({"overlong_buffer_len": 5}, r"overlong_buffer_len must be in \[1, generation.max_new_tokens=4\], got 5"),
    ({"overlong_buffer_len": 2, "overlong_penalty": 0.0}, r"overlong_penalty must be a finite number > 0"),
    ({"overlong_buffer_len": 2, "overlong_penalty": float("nan")}, r"overlong_penalty must be a finite number > 0"),
    ({"importance_sampling_level": "word"}, r"importance_sampling_level"),
    ({"mask_truncated_completions": "maybe"}, r"mask_truncated_completions"),
])
def test_bad_values_are_one_line_errors_before_anything_is_written(tmp_path, capsys, bad, message):
    import re

    out = tmp_path / "run"
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(yaml.safe_dump({"stage": "grpo", **grpo_toy_cfg(out, **bad)}))
    capsys.readouterr()
    assert grpo.main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not out.exists()


def test_a_run_with_the_long_completion_options_resumes_exactly(tmp_path):
    # (mask_truncated_completions keeps no state, and with every toy completion cut it would freeze the policy)
    opts = {"importance_sampling_level": "sequence", "overlong_buffer_len": 2, "loss_type": "sequence"}
    full = grpo.train(from_dict(grpo.Config, grpo_toy_cfg(tmp_path / "full", **opts)))
    out = tmp_path / "run"
    grpo_rewards.CALLS["flaky"] = 0
    grpo_rewards.NAN_FROM_CALL = 4   # the probe, the initial evaluation, rollout 1; NaN in rollout 2
    with pytest.raises(NonFiniteError, match="'flaky'"):
        grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out, **opts)))
    assert safe_torch_load(out / "checkpoints" / "checkpoint.pt")["step"] == 1
    grpo_rewards.NAN_FROM_CALL = None
    assert grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out, **opts))) == full
    assert full["train/rewards/overlong_penalty/mean"] < 0
