"""Fixtures for the pipelines tests (plain helpers are in tests/pipelines/helpers.py)."""

from __future__ import annotations

import pytest

from tests.pipelines import grpo_rewards


@pytest.fixture
def reset_flaky():
    """No NaN from tests.pipelines.grpo_rewards:flaky unless a test asks for it, before and after each test."""
    grpo_rewards.NAN_FROM_CALL = None
    yield
    grpo_rewards.NAN_FROM_CALL = None
