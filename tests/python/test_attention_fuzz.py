"""Fixed sets of the differential fuzzers' random cases. fuzz/attention_diff.py: every dtype, mask kind, alignment,
window, ALiBi, GQA, strided inputs, tile-edge and long-key lengths, 1 and 2 threads: attn.torch's forward and backward
against PyTorch's float64 autograd. fuzz/mha_diff.py: attn.torch.MultiheadAttention against nn.MultiheadAttention in
float64 (every constructor option, layout and mask kind). Skipped when torch is not installed."""
import os
import sys

import pytest

pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "fuzz"))
import attention_diff  # noqa: E402
import mha_diff  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def keep_torch_threads():  # the fuzzers set 1 or 2 threads per case
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_random_configurations_match_float64_pytorch():
    lines = []
    failed = attention_diff.fuzz(seed=20261128, cases=300, log=lines.append)
    assert not failed, "\n".join(lines)
    assert lines[-1].startswith("300 cases, 0 failed")


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask")  # nn's own
def test_random_multihead_attention_calls_match_float64_pytorch():
    lines = []
    failed = mha_diff.fuzz(seed=20261128, cases=500, log=lines.append)
    assert not failed, "\n".join(lines)
    assert lines[-1].startswith("500 cases, 0 failed")
