# Type stubs for attn.cuda (python/attn/cuda.py): attn's CUDA kernels on bf16/fp16 GPU tensors.
from typing import Any, List, Literal, Optional, Tuple, Union, overload

from torch import Tensor

__all__: List[str]

def library_path() -> Optional[str]:
    """Where libattn_cuda.so was found (ATTN_CUDA_LIBRARY, beside the module, the build tree), or None."""

def available() -> bool:
    """True when libattn_cuda loads and sees a GPU."""

@overload
def scaled_dot_product_attention(query: Any, key: Any, value: Any, attn_mask: None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None, enable_gqa: bool = False, *,
                                 causal_alignment: Optional[Literal["none", "top-left", "bottom-right"]] = None,
                                 key_padding_mask: Optional[Tensor] = None, window: int = 0,
                                 return_lse: Literal[False] = False) -> Tensor:
    """query (B, H, Lq, D), key/value (B, Hkv, Lk, D): CUDA torch tensors or DLPack producers, bf16 or fp16,
    D in {64, 128}. key_padding_mask (B, Lk) bool True = padding. Returns (B, H, Lq, D), and with return_lse=True
    also the (B, H, Lq) float32 log-sum-exp. Differentiable in query, key and value."""
@overload
def scaled_dot_product_attention(query: Any, key: Any, value: Any, attn_mask: None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None, enable_gqa: bool = False, *,
                                 causal_alignment: Optional[Literal["none", "top-left", "bottom-right"]] = None,
                                 key_padding_mask: Optional[Tensor] = None, window: int = 0,
                                 return_lse: Literal[True]) -> Tuple[Tensor, Tensor]: ...
@overload
def scaled_dot_product_attention(query: Any, key: Any, value: Any, attn_mask: None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None, enable_gqa: bool = False, *,
                                 causal_alignment: Optional[Literal["none", "top-left", "bottom-right"]] = None,
                                 key_padding_mask: Optional[Tensor] = None, window: int = 0,
                                 return_lse: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """return_lse known only at run time: the output, or (output, lse)."""
