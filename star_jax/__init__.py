"""star_jax: teach language models to reason with reinforcement learning, in JAX."""
