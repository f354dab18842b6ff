"""Test-wide settings: never touch the network, keep runs small and deterministic."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="reins-hf-"))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("MINARI_DATASETS_PATH", tempfile.mkdtemp(prefix="reins-minari-"))
# Tiny models gain nothing from intra-op threads, and subprocess tests (2-process accelerate runs) would
# oversubscribe the 2 cores: one thread per process keeps the suite fast and its timings stable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import signal  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# A non-interactive shell starts a background job (`pytest &`, nohup) with SIGINT ignored, and an ignored signal
# is inherited through exec by every subprocess: the interrupt tests' children would never see their Ctrl-C.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

torch.set_num_threads(1)
# Every stage's main() flushes subnormal floats to zero for the rest of its process (reins.cli.flush_denormals),
# while train() called in-process does not: set the mode once for the whole suite, so an in-process
# bit-equality check gives the same answer whichever tests ran before it.
torch.set_flush_denormal(True)


@pytest.fixture
def gen():
    """A seeded torch generator for tests that draw random tensors."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def _flush_denormals_after_each_test():
    """A test that changes the denormal mode (tests/reins/test_cli.py) leaves the suite's mode behind it."""
    yield
    torch.set_flush_denormal(True)
