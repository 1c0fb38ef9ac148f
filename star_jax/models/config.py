"""The decoder LM's architecture hyper-parameters."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A Llama/Qwen2-family decoder-only transformer.

  Frozen (hashable) so it can be a static argument of jitted functions.
  """

  vocab_size: int = 100  # number of token ids
  d_model: int = 128  # residual stream width D
  n_layers: int = 4  # transformer blocks
  n_heads: int = 4  # query heads H
  n_kv_heads: int = 0  # key/value heads K (grouped-query attention); 0 means = n_heads
  head_dim: int = 0  # per-head width; 0 means d_model // n_heads
  d_ff: int = 0  # SwiGLU hidden width F; 0 means 4 * d_model
  rope_theta: float = 10_000.0  # rotary embedding base
  norm_eps: float = 1e-6  # RMSNorm epsilon
  qkv_bias: bool = False  # bias on q/k/v projections (Qwen2)
  tie_embeddings: bool = False  # output projection = input embedding transposed
  dtype: str = "float32"  # activation / compute dtype
  param_dtype: str = "float32"  # parameter storage dtype

  def __post_init__(self):
    # Fill the derived defaults in place (the dataclass is frozen).
    if self.n_kv_heads == 0:
      object.__setattr__(self, "n_kv_heads", self.n_heads)
    if self.head_dim == 0:
      object.__setattr__(self, "head_dim", self.d_model // max(self.n_heads, 1))
    if self.d_ff == 0:
      object.__setattr__(self, "d_ff", 4 * self.d_model)
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
          f"model.n_heads ({self.n_heads}) must be a multiple of model.n_kv_heads ({self.n_kv_heads})"
      )
    if self.head_dim % 2:
      raise ValueError(f"model.head_dim must be even for rotary embeddings, got {self.head_dim}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"model.{name} must be float32, bfloat16 or float16, got {getattr(self, name)!r}")

  def num_params(self) -> int:
    """Exact parameter count, by formula (tested against the initialised tree)."""
    d, v, h, k, dh, f = (self.d_model, self.vocab_size, self.n_heads, self.n_kv_heads,
                         self.head_dim, self.d_ff)
    attention = d * h * dh + 2 * d * k * dh + h * dh * d
    if self.qkv_bias:
      attention += h * dh + 2 * k * dh
    block = 2 * d + attention + 3 * d * f  # two RMSNorm scales, attention, SwiGLU
    embeddings = v * d if self.tie_embeddings else 2 * v * d
    return embeddings + self.n_layers * block + d  # + final RMSNorm
