"""attn.cuda where CI runs (no GPU): the module imports, finds the library the wheel carries (when nvcc was there at
build time), says whether a GPU is visible, and rejects what it cannot take with errors that name the argument.
The GPU tests themselves are tests/gpu/test_cuda_torch.py (scripts/gpu_check.sh)."""
import pytest

torch = pytest.importorskip("torch")
import attn.cuda as ac  # noqa: E402


def test_available_is_a_bool_and_false_without_a_gpu():
    assert isinstance(ac.available(), bool)
    if not torch.cuda.is_available():
        assert ac.available() is False


def test_cpu_tensors_are_rejected_naming_the_argument():
    x = torch.randn(1, 2, 8, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"query must be on a CUDA device.*\(1, 2, 8, 64\)"):
        ac.scaled_dot_product_attention(x, x, x)


def test_non_tensors_are_rejected():
    with pytest.raises(TypeError, match="query must be a torch tensor or support DLPack"):
        ac.scaled_dot_product_attention([1.0], [1.0], [1.0])


def test_torch_positional_order_refuses_a_mask_or_dropout():
    """The positional arguments are F.scaled_dot_product_attention's: a mask or a dropout probability passed where
    torch takes them is refused, not read as is_causal or scale."""
    x = torch.randn(1, 2, 8, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="attn_mask: the GPU kernels take no boolean or float mask"):
        ac.scaled_dot_product_attention(x, x, x, torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"dropout_p must be 0 on the GPU.*0\.1"):
        ac.scaled_dot_product_attention(x, x, x, None, 0.1)
    for zero in (0.0, 0, False, torch.tensor(0.0)):  # accepted, on to the tensors (False: `self.training and p`)
        with pytest.raises(ValueError, match="query must be on a CUDA device"):
            ac.scaled_dot_product_attention(x, x, x, None, zero, True)
    for bad in (True, "0", torch.zeros(2)):
        with pytest.raises(ValueError, match="dropout_p must be 0 on the GPU"):
            ac.scaled_dot_product_attention(x, x, x, None, bad)


def test_library_path_points_at_a_file_or_is_none():
    path = ac.library_path()
    assert path is None or path.endswith("libattn_cuda.so")


def test_the_c_entry_points_report_errors_by_type():
    """attn_cuda_forward through ctypes: the C API's error codes become ValueError / TypeError with the C++ message
    (argument checks run before any CUDA call, so this runs without a GPU)."""
    if ac.library_path() is None:
        pytest.skip("libattn_cuda was not built (no nvcc when the wheel was made)")
    import ctypes

    lib = ac._load()
    p = ac._Problem()
    p.B = p.H = p.Hkv = 1
    p.Lq = p.Lk = 4
    p.D = 96
    with pytest.raises(ValueError, match=r"head size D=96 \(q \[1, 1, 4, 96\]\)"):
        ac._call(lib.attn_cuda_forward, ctypes.byref(p))
    p.D, p.dtype = 64, 7
    with pytest.raises(TypeError, match="dtype code 7"):
        ac._call(lib.attn_cuda_forward, ctypes.byref(p))
    p.dtype, p.causal = 0, 5
    with pytest.raises(ValueError, match="causal code 5"):
        ac._call(lib.attn_cuda_forward, ctypes.byref(p))
