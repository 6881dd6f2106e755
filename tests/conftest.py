"""Shared test setup: every test starts from the same random state, so failures reproduce."""

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: a worker with several threads oversubscribes the cores, and the many
    # tiny ops of these tests then run several times slower (one README block: 6 s alone, 51 s under 2x2 threads)
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
