import os

import pytest
import torch
from hypothesis import settings

# Property tests must stay fast on a 2-core CI machine and never depend on the wall clock.
settings.register_profile("default", max_examples=40, deadline=None)
settings.register_profile("ci", max_examples=60, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
