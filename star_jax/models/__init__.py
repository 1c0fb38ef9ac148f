"""The decoder LM: configuration, Flax modules and pure-functional entry points."""

from star_jax.models.config import ModelConfig
from star_jax.models.functional import (
                                        abstract_params,
                                        cond_band_attention,
                                        count_params,
                                        forward,
                                        forward_cached,
                                        forward_with_hidden,
                                        init_cache,
                                        init_params,
                                        logical_axes,
                                        positions_from_segments,
                                        segment_causal_mask,
)
from star_jax.models.heads import HeadConfig, RewardOutputs, init_reward_params, reward_forward  # noqa: F401
from star_jax.models.hf import load_hf, save_hf
from star_jax.models.transformer import LayerCache

__all__ = [
    "ModelConfig", "LayerCache", "abstract_params", "cond_band_attention", "count_params", "forward", "forward_cached",
    "forward_with_hidden", "init_cache", "init_params", "load_hf", "logical_axes", "save_hf", "positions_from_segments",
    "segment_causal_mask",
]
