"""ssljax: self-supervised visual pre-training in JAX/Flax, sharded over a device mesh."""

__version__ = "0.1.0"
