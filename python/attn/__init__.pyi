# Type stubs for attn (python/attn/__init__.py): NumPy in, NumPy out. attn.torch has its own (torch.pyi).
import os
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str
__all__: List[str]

ArrayLike = npt.ArrayLike
F32 = npt.NDArray[np.float32]
# attention's output: float32, or float16 / ml_dtypes.bfloat16 for such inputs (without ml_dtypes, torch bfloat16
# inputs give a torch tensor)
Out = npt.NDArray[Any]
KvCache = Literal["f32", "bf16", "int8"]
PathLike = Union[str, "os.PathLike[str]"]
Alignment = Literal["top-left", "bottom-right", "none"]
Impl = Literal["auto", "fused", "unfused", "reference"]

@overload
def scaled_dot_product_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                                 attn_mask: Optional[ArrayLike] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None, enable_gqa: bool = False, *,
                                 causal_alignment: Optional[Alignment] = None,
                                 key_padding_mask: Optional[ArrayLike] = None, return_weights: Literal[False] = False,
                                 window: int = 0, alibi_slopes: Optional[ArrayLike] = None, impl: Impl = "auto",
                                 num_threads: int = 0) -> Out:
    """query (..., H, Lq, D), key (..., Hkv, Lk, D), value (..., Hkv, Lk, Dv) -> (..., H, Lq, Dv)."""
@overload
def scaled_dot_product_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                                 attn_mask: Optional[ArrayLike] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None, enable_gqa: bool = False, *,
                                 causal_alignment: Optional[Alignment] = None,
                                 key_padding_mask: Optional[ArrayLike] = None, return_weights: Literal[True],
                                 window: int = 0, alibi_slopes: Optional[ArrayLike] = None, impl: Impl = "auto",
                                 num_threads: int = 0) -> Tuple[Out, Out]:
    """(output (..., H, Lq, Dv), weights (..., H, Lq, Lk))."""
@overload
def scaled_dot_product_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                                 attn_mask: Optional[ArrayLike] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None, enable_gqa: bool = False, *,
                                 causal_alignment: Optional[Alignment] = None,
                                 key_padding_mask: Optional[ArrayLike] = None, return_weights: bool = False,
                                 window: int = 0, alibi_slopes: Optional[ArrayLike] = None, impl: Impl = "auto",
                                 num_threads: int = 0) -> Union[Out, Tuple[Out, Out]]:
    """return_weights known only at run time: the output, or (output, weights)."""

class MultiheadAttention:
    """torch.nn.MultiheadAttention (inference) on NumPy arrays; forward -> (output, weights or None)."""
    embed_dim: int
    num_heads: int
    num_kv_heads: int
    kdim: int
    vdim: int
    bias: bool
    batch_first: bool
    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: Optional[int] = None,
                 vdim: Optional[int] = None, batch_first: bool = False, *, num_kv_heads: Optional[int] = None,
                 seed: int = 0) -> None: ...
    def load_state_dict(self, state_dict: Mapping[str, ArrayLike], prefix: str = "",
                        strict: bool = True) -> "MultiheadAttention": ...
    @classmethod
    def from_safetensors(cls, path: PathLike, num_heads: int, *, prefix: str = "", batch_first: bool = False,
                         num_kv_heads: Optional[int] = None) -> "MultiheadAttention": ...
    def state_dict(self) -> Dict[str, F32]:
        """PyTorch's names -> float32 copies of the weights (writing into one leaves the layer as it is)."""
    def forward(self, query: ArrayLike, key: ArrayLike, value: ArrayLike, key_padding_mask: Optional[ArrayLike] = None,
                need_weights: bool = True, attn_mask: Optional[ArrayLike] = None, average_attn_weights: bool = True,
                is_causal: bool = False, *, impl: Impl = "auto", num_threads: int = 0) -> Tuple[F32, Optional[F32]]:
        """query (L, N, E) / (N, L, E) with batch_first / (L, E) -> (output like query,
        weights (N, L, S) averaged or (N, H, L, S), or None)."""
    def __call__(self, query: ArrayLike, key: ArrayLike, value: ArrayLike,
                 key_padding_mask: Optional[ArrayLike] = None, need_weights: bool = True,
                 attn_mask: Optional[ArrayLike] = None, average_attn_weights: bool = True, is_causal: bool = False, *,
                 impl: Impl = "auto", num_threads: int = 0) -> Tuple[F32, Optional[F32]]: ...

def shipped_model_dir() -> str: ...

class Translator:
    """English number words -> Chinese numerals with the shipped (or a given) encoder-decoder model."""
    model_dir: str
    def __init__(self, model_dir: Optional[PathLike] = None, quantize: Literal["none", "int8", "bf16", "float32"] = "none") -> None: ...
    @staticmethod
    def grammar_problem(text: str) -> Optional[str]: ...
    @overload
    def __call__(self, text: str, beam: int = 1, strict: bool = False, max_length: int = 0, batch_size: int = 64,
                 num_threads: int = 0, kv_cache: KvCache = "f32", length_penalty: float = 0.6) -> str: ...
    @overload
    def __call__(self, text: List[str], beam: int = 1, strict: bool = False, max_length: int = 0,
                 batch_size: int = 64, num_threads: int = 0, kv_cache: KvCache = "f32",
                 length_penalty: float = 0.6) -> List[str]: ...

class SentenceEncoder:
    """A BERT sentence encoder: encode(sentences) -> float32 (N, hidden × pooling modes), pooled as the directory's
    Pooling module says (mean for all-MiniLM-L6-v2), L2-normalised where its modules.json lists Normalize (as
    sentence-transformers)."""
    def __init__(self, model_dir: Optional[PathLike] = None, quantize: Literal["none", "int8", "bf16"] = "none",
                 dtype: Literal["f32", "bf16", "float32", "bfloat16"] = "f32") -> None: ...
    def tokenize(self, sentence: str) -> List[int]: ...
    @overload
    def encode(self, sentences: str, batch_size: int = 32, num_threads: int = 0) -> F32: ...
    @overload
    def encode(self, sentences: List[str], batch_size: int = 32, num_threads: int = 0) -> F32: ...

def load_safetensors(path: PathLike, prefix: str = "") -> Tuple[Dict[str, np.ndarray], Dict[str, str]]: ...
def save_safetensors(path: PathLike, tensors: Mapping[str, ArrayLike],
                     metadata: Optional[Mapping[str, str]] = None) -> None: ...
