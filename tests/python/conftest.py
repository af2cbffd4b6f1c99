"""Every test starts from the same random state: a test that draws from torch's or NumPy's global generators (many
do, through torch.randn) gets the same inputs whether it runs alone or after others, so a failure reproduces."""
import random

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _fixed_random_state():
    random.seed(0)
    np.random.seed(0)
    try:
        import torch
    except ImportError:  # attn's NumPy module is tested without torch too
        return
    torch.manual_seed(0)
