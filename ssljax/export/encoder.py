"""`ssljax.load_encoder`: a trained encoder as a function of images, for code outside ssljax.

    encoder = ssljax.load_encoder("runs/byol", network="online")
    out = encoder(images)            # [B, H, W, 3] RGB in [0, 1], the run's image size
    out["pooled"]                    # [B, C] pooled features, as the evaluations see them
    out["layer4"]                    # [B, h, w, C] the last feature map (ResNets and
                                     # MobileNetV2 also give 'layer1'..'layer3')

The encoder runs in inference mode (running BN statistics), jitted, on the default
device; the images are normalised inside it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections


@dataclasses.dataclass(frozen=True)
class Encoder:
    """A run's encoder with its weights: ``encoder(images)`` → dict of float32 arrays."""

    module: Any
    variables: dict
    config: ml_collections.ConfigDict
    network: str
    step: int | None  # None: the random-init network

    def __post_init__(self):
        apply = jax.jit(lambda variables, images: self.module.apply(variables, images, train=False))
        object.__setattr__(self, "_apply", apply)

    @property
    def image_size(self) -> int:
        return self.config.dataset.image_size

    @property
    def num_features(self) -> int:
        return self.module.num_features

    def __call__(self, images) -> dict[str, jax.Array]:
        return self._apply(self.variables, images)


def load_encoder(
    workdir: str,
    network: str | None = None,
    checkpoint: int | None = None,
    random_init: bool = False,
) -> Encoder:
    """The encoder of the training run in `workdir` at its newest (or `checkpoint`) step.

    `network`: 'online' or 'target'; None: the one the method's paper evaluates (the
    teacher for DINO and Momentum² Teacher, the online/query encoder otherwise).
    `random_init`: the untrained network of the same config.
    """
    from ssljax.run import load_run

    loaded = load_run(workdir, checkpoint, random_init=random_init)
    variables = loaded.encoder_variables(network)
    step = None if random_init else loaded.step
    return Encoder(
        loaded.method.encoder, variables, loaded.config, loaded.method.network(network), step
    )
