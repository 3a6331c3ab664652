"""Backbones, heads and the batch norm they share."""

from ssljax.models.heads import MLP, LinearClassifier
from ssljax.models.norm import BatchNorm, parse_bn_group
from ssljax.models.resnet import RESNET_DEPTHS, ResNet, build_resnet

__all__ = [
    "MLP",
    "RESNET_DEPTHS",
    "BatchNorm",
    "LinearClassifier",
    "ResNet",
    "build_resnet",
    "parse_bn_group",
]
