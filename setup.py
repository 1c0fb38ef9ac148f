"""star_jax: teach language models to reason with reinforcement learning, in JAX."""

from setuptools import find_packages, setup

setup(
    name="star_jax",
    version="0.1.0",
    description=(
        "STaR (Self-Taught Reasoner), policy gradients with KL regularisation, process reward "
        "heads and Tree-of-Thoughts search as jitted, sharded JAX training and sampling steps."
    ),
    python_requires=">=3.11",
    packages=find_packages(include=["star_jax", "star_jax.*", "experiments", "experiments.*"]),
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9.8",
        "grain>=0.2.10",
        "array_record>=0.5",
        "ml_collections>=1.0",
        "absl-py>=2.1",
        "numpy>=1.26",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",
        "tokenizers>=0.19",
        "safetensors>=0.4",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6", "portpicker>=1.6",
                 "ruff>=0.6", "hypothesis>=6.100"],
        # torch==2.13.0 is the CPU build kept on these machines' disk; an unpinned torch pulls CUDA.
        "hf": ["torch==2.13.0", "transformers>=4.45"],
    },
)
