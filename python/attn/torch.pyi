# Type stubs for attn.torch (python/attn/torch.py): attn's kernels on CPU float32, bfloat16 and float16 torch tensors
# (CUDA tensors: scaled_dot_product_attention through attn.cuda).
from typing import List, Literal, Optional, Tuple

import torch
from torch import Tensor, nn

__all__: List[str]

class ArgumentError(ValueError, RuntimeError):
    """A bad argument, named in the message; a RuntimeError too, as PyTorch's own checks raise."""

class DTypeError(TypeError, RuntimeError):
    """A tensor of a dtype attn does not take; a RuntimeError too, as PyTorch raises."""

def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False, *,
                                 causal_alignment: Optional[Literal["none", "top-left", "bottom-right"]] = None,
                                 key_padding_mask: Optional[Tensor] = None, window: int = 0,
                                 alibi_slopes: Optional[Tensor] = None) -> Tensor:
    """query (..., H, Lq, D), key (..., Hkv, Lk, D), value (..., Hkv, Lk, Dv) -> (..., H, Lq, Dv), one dtype for all
    (float32, bfloat16 or float16).
    attn_mask broadcastable to (..., H, Lq, Lk) (bool True = may attend, or float added); key_padding_mask
    (B, Lk) bool True = padding; alibi_slopes (H,). Differentiable in query, key and value."""

class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention computed with attn; plus num_kv_heads (grouped-query attention)."""
    embed_dim: int
    kdim: int
    vdim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dropout: float
    batch_first: bool
    add_zero_attn: bool
    in_proj_weight: Optional[nn.Parameter]
    q_proj_weight: Optional[nn.Parameter]
    k_proj_weight: Optional[nn.Parameter]
    v_proj_weight: Optional[nn.Parameter]
    in_proj_bias: Optional[nn.Parameter]
    bias_k: Optional[nn.Parameter]
    bias_v: Optional[nn.Parameter]
    out_proj: nn.Linear
    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: Optional[int] = None,
                 vdim: Optional[int] = None, batch_first: bool = False, device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None, *, num_kv_heads: Optional[int] = None) -> None: ...
    def merge_masks(self, attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor],
                    query: Tensor) -> Tuple[Optional[Tensor], Optional[int]]:
        """nn.MultiheadAttention.merge_masks."""
    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """query (L, N, E) / (N, L, E) with batch_first / (L, E); key (S, N, kdim), value (S, N, vdim) likewise
        -> (output like query, weights (N, L, S) averaged over heads or (N, H, L, S), or None)."""
