"""Backbones, heads and the batch norm they share."""

from ssljax.models.backbones import BACKBONES, build_backbone
from ssljax.models.heads import MLP, LinearClassifier
from ssljax.models.mobilenet_v2 import MobileNetV2, build_mobilenet_v2
from ssljax.models.norm import BatchNorm, parse_bn_group
from ssljax.models.resnet import RESNET_DEPTHS, ResNet, build_resnet
from ssljax.models.vit import VIT_SIZES, VisionTransformer, build_vit

__all__ = [
    "BACKBONES",
    "MLP",
    "RESNET_DEPTHS",
    "VIT_SIZES",
    "BatchNorm",
    "LinearClassifier",
    "MobileNetV2",
    "ResNet",
    "VisionTransformer",
    "build_backbone",
    "build_mobilenet_v2",
    "build_resnet",
    "build_vit",
    "parse_bn_group",
]
