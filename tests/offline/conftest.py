"""Fixtures for offline tests: a private MINARI_DATASETS_PATH, one torch thread. Plain dataset builders are in
tests/offline/helpers.py."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture
def one_thread():
    """Small nets on a shared 2-core machine run ~10x faster on one thread than two."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
