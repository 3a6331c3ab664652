"""ssljax: self-supervised visual pre-training in JAX/Flax, sharded over a device mesh."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `import ssljax` stays light: jax and the models load on first use of the API.
    if name == "load_encoder":
        from ssljax.export.encoder import load_encoder

        return load_encoder
    raise AttributeError(f"module 'ssljax' has no attribute {name!r}")


__all__ = ["load_encoder"]
