"""ssljax encoder variables → a PyTorch `state_dict` with torchvision or timm names (numpy).

`target(model_config, image_size, format)` says which PyTorch model an encoder becomes,
or raises a one-line `UserError` naming what is missing; `state_dict(module, variables,
target)` fills it. No torch import here: the arrays are numpy, written by `ssljax.export`.

Layouts, all exact (same float32 numbers, same padding):

- ResNet-18…152 at width 1 → torchvision ``resnet*`` (our conv padding is PyTorch's: 3 for
  the 7×7 stem, 1 for 3×3 and the max-pool; the stride of a bottleneck on its 3×3 conv,
  v1.5, as torchvision); with --format=timm, and for ResNet-200, timm's ``resnet*``
  (the same key names and padding). Refused, as neither library has them: width
  multipliers (ours scale every channel, stem included; timm's ResNet keeps a 64-channel
  stem, torchvision's wide_resnet widens only the inner 3×3 convs) and the small 32-px
  stem (3×3 stride 1, no max-pool).
- MobileNetV2 → torchvision ``mobilenet_v2(width_mult=w)`` (same `_make_divisible` widths).
- ViT-Ti/16, ViT-S/16 → timm ``vit_tiny_patch16_224`` / ``vit_small_patch16_224`` (pre-norm
  blocks, fused qkv, exact GELU, LayerNorm ε 1e-6, CLS token + learned position embedding
  with a CLS position, the CLS token after the final norm as pooled feature).
- Conv kernels HWIO → OIHW, dense kernels [in, out] → [out, in]; BN scale/bias/mean/var →
  weight/bias/running_mean/running_var (ε 1e-5 on both sides; `num_batches_tracked` 0).
- The classifier (`fc`, `classifier.1`, `head`) is left out: torchvision models load with
  ``strict=True`` after ``model.<head> = torch.nn.Identity()``; timm models are built with
  ``num_classes=0``. Either way ``model(x)`` is then the pooled feature vector.

Input normalisation: ssljax normalises inside the model with `module.mean`/`module.std`
(ImageNet's). torchvision users feed the same; timm's ViTs expect mean = std = 0.5
(their pretrained config), so for them the difference is folded into the patch
embedding, which is exact for its unpadded convolution. The JSON beside the file states
the mean/std to feed either way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np

from ssljax.errors import UserError
from ssljax.models.mobilenet_v2 import INVERTED_RESIDUAL_STAGES, MobileNetV2
from ssljax.models.resnet import LAYERS, RESNET_DEPTHS, ResNet
from ssljax.models.vit import VIT_SIZES, VisionTransformer

FORMATS = ("torchvision", "timm")
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
TIMM_VITS = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224"}
TIMM_VIT_MEAN_STD = (0.5, 0.5, 0.5)  # timm's pretrained config of both ViTs
BN_EPSILON = 1e-5  # ours and PyTorch's


@dataclasses.dataclass(frozen=True)
class Target:
    """The PyTorch model an encoder becomes: ``constructor(*args, **kwargs)``, then
    ``model.<identity_head> = torch.nn.Identity()`` when `identity_head` is set."""

    format: str
    architecture: str
    constructor: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    identity_head: str | None
    fold_mean_std: tuple[float, ...] | None = None  # fold the input normalisation to this


def target(model: ml_collections.ConfigDict, image_size: int, format: str) -> Target:
    """The PyTorch model for a config's `model` field, or a `UserError` naming what is
    missing (checked before any checkpoint is read)."""
    if format not in FORMATS:
        raise UserError(f"--format={format}: choose one of {', '.join(FORMATS)}")
    name, width = model.name, float(model.width)
    if name in RESNET_DEPTHS:
        return _resnet_target(name, width, model.small_stem, format)
    if name == "mobilenet_v2":
        if model.small_stem:
            raise UserError(
                "a small_stem MobileNetV2 (stride-1 stem and first stage) has no torchvision "
                "or timm constructor; export a network trained with model.small_stem=False"
            )
        if format != "torchvision":
            raise UserError(
                "--format=timm: timm's mobilenetv2 uses other layer names; "
                "export MobileNetV2 with --format=torchvision (torchvision.models.mobilenet_v2)"
            )
        kwargs = {"weights": None} if width == 1 else {"weights": None, "width_mult": width}
        return Target(format, name, "torchvision.models.mobilenet_v2", (), kwargs, "classifier")
    if name in VIT_SIZES:
        if format != "timm":
            raise UserError(
                f"--format=torchvision: torchvision has no {name} (its ViTs start at ViT-B); "
                f"export with --format=timm ({TIMM_VITS[name]})"
            )
        return _vit_target(model, image_size)
    raise UserError(f"model {name!r} cannot be exported")


def _resnet_target(name: str, width: float, small_stem: bool, format: str) -> Target:
    if small_stem:
        raise UserError(
            f"a small_stem {name} (3×3 stride-1 stem, no max-pool) has no torchvision or timm "
            "constructor; export a network trained with model.small_stem=False"
        )
    if width != 1:
        raise UserError(
            f"no torchvision or timm model is a {name} at width {width:g} (every channel "
            f"×{width:g}): timm's ResNet keeps a 64-channel stem and torchvision's "
            "wide_resnet widens only the inner 3×3 convs; export a width-1 network"
        )
    if format == "torchvision":
        if name not in TORCHVISION_RESNETS:
            raise UserError(f"torchvision has no {name}; export it with --format=timm")
        return Target(format, name, f"torchvision.models.{name}", (), {"weights": None}, "fc")
    kwargs = {"pretrained": False, "num_classes": 0}
    return Target(format, name, "timm.create_model", (name,), kwargs, None)


def _vit_target(model: ml_collections.ConfigDict, image_size: int) -> Target:
    dim, depth, heads = VIT_SIZES[model.name]
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    if image_size != 224:
        kwargs["img_size"] = image_size
    if model.patch_size != 16:
        kwargs["patch_size"] = model.patch_size
    embed_dim = max(1, round(dim * model.width / heads)) * heads  # as `build_vit`
    if embed_dim != dim:
        kwargs["embed_dim"] = embed_dim
    if model.depth and model.depth != depth:
        kwargs["depth"] = model.depth
    return Target(
        "timm",
        model.name,
        "timm.create_model",
        (TIMM_VITS[model.name],),
        kwargs,
        None,
        fold_mean_std=TIMM_VIT_MEAN_STD,
    )


def _conv(kernel) -> np.ndarray:
    """Flax HWIO → PyTorch OIHW."""
    return np.ascontiguousarray(np.asarray(kernel, np.float32).transpose(3, 2, 0, 1))


def _bn(out: dict, name: str, params, stats) -> None:
    out[f"{name}.weight"] = np.asarray(params["scale"], np.float32)
    out[f"{name}.bias"] = np.asarray(params["bias"], np.float32)
    out[f"{name}.running_mean"] = np.asarray(stats["mean"], np.float32)
    out[f"{name}.running_var"] = np.asarray(stats["var"], np.float32)
    out[f"{name}.num_batches_tracked"] = np.zeros((), np.int64)


def resnet_state_dict(module: ResNet, params, stats) -> dict[str, np.ndarray]:
    """torchvision/timm ResNet names (they agree) for our ResNet's variables."""
    out: dict[str, np.ndarray] = {"conv1.weight": _conv(params["stem_conv"]["kernel"])}
    _bn(out, "bn1", params["stem_bn"], stats["stem_bn"])
    convs = 3 if module.bottleneck else 2
    for layer, blocks in zip(LAYERS, module.stage_sizes):
        for block in range(blocks):
            ours, theirs = f"{layer}_block{block}", f"{layer}.{block}"
            p, s = params[ours], stats[ours]
            for i in range(1, convs + 1):
                out[f"{theirs}.conv{i}.weight"] = _conv(p[f"conv{i}"]["kernel"])
                _bn(out, f"{theirs}.bn{i}", p[f"bn{i}"], s[f"bn{i}"])
            if "shortcut_conv" in p:
                out[f"{theirs}.downsample.0.weight"] = _conv(p["shortcut_conv"]["kernel"])
                _bn(out, f"{theirs}.downsample.1", p["shortcut_bn"], s["shortcut_bn"])
    return out


def mobilenet_v2_state_dict(module: MobileNetV2, params, stats) -> dict[str, np.ndarray]:
    """torchvision's `mobilenet_v2` names: features.0 the stem, features.1…17 the inverted
    residual blocks in order, features.18 the last 1×1 conv; Conv2dNormActivation holds
    its conv at .0 and BN at .1."""
    out: dict[str, np.ndarray] = {"features.0.0.weight": _conv(params["stem_conv"]["kernel"])}
    _bn(out, "features.0.1", params["stem_bn"], stats["stem_bn"])
    index = 1
    for stage, (expansion, _, blocks, _) in enumerate(INVERTED_RESIDUAL_STAGES):
        for block in range(blocks):
            ours, theirs = f"stage{stage}_block{block}", f"features.{index}.conv"
            p, s = params[ours], stats[ours]
            # conv.i = Conv2dNormActivation (expand if t > 1, then depth-wise), then the
            # linear projection as a bare conv and a BN.
            activated = ("depthwise",) if expansion == 1 else ("expand", "depthwise")
            for i, part in enumerate(activated):
                out[f"{theirs}.{i}.0.weight"] = _conv(p[f"{part}_conv"]["kernel"])
                _bn(out, f"{theirs}.{i}.1", p[f"{part}_bn"], s[f"{part}_bn"])
            project = len(activated)
            out[f"{theirs}.{project}.weight"] = _conv(p["project_conv"]["kernel"])
            _bn(out, f"{theirs}.{project + 1}", p["project_bn"], s["project_bn"])
            index += 1
    out[f"features.{index}.0.weight"] = _conv(params["last_conv"]["kernel"])
    _bn(out, f"features.{index}.1", params["last_bn"], stats["last_bn"])
    return out


def _dense(out: dict, name: str, params) -> None:
    out[f"{name}.weight"] = np.ascontiguousarray(np.asarray(params["kernel"], np.float32).T)
    out[f"{name}.bias"] = np.asarray(params["bias"], np.float32)


def _layer_norm(out: dict, name: str, params) -> None:
    out[f"{name}.weight"] = np.asarray(params["scale"], np.float32)
    out[f"{name}.bias"] = np.asarray(params["bias"], np.float32)


def fold_normalisation(kernel, bias, mean, std, new_mean, new_std):
    """(kernel, bias) of an unpadded HWIO conv that gives on (x − new_mean)/new_std what the
    original gives on (x − mean)/std: the input is (x' · new_std + new_mean − mean)/std."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    new_mean, new_std = np.asarray(new_mean, np.float64), np.asarray(new_std, np.float64)
    kernel = np.asarray(kernel, np.float64)
    folded = kernel * (new_std / std)[None, None, :, None]
    shift = np.einsum("hwio,i->o", kernel, (new_mean - mean) / std)
    return folded.astype(np.float32), (np.asarray(bias, np.float64) + shift).astype(np.float32)


def vit_state_dict(
    module: VisionTransformer, params, fold_mean_std: tuple[float, ...] | None = None
) -> dict[str, np.ndarray]:
    """timm `VisionTransformer` names; with `fold_mean_std` the patch embedding expects
    inputs normalised with mean = std = `fold_mean_std` instead of `module.mean/std`."""
    kernel, bias = params["patch_embedding"]["kernel"], params["patch_embedding"]["bias"]
    if fold_mean_std is not None:
        kernel, bias = fold_normalisation(
            kernel, bias, module.mean, module.std, fold_mean_std, fold_mean_std
        )
    dim = module.dim
    out: dict[str, np.ndarray] = {
        "cls_token": np.asarray(params["cls_token"], np.float32).reshape(1, 1, dim),
        "pos_embed": np.asarray(params["pos_embedding"], np.float32)[None],
        "patch_embed.proj.weight": _conv(kernel),
        "patch_embed.proj.bias": np.asarray(bias, np.float32),
    }
    for i in range(module.depth):
        p, name = params[f"block{i}"], f"blocks.{i}"
        _layer_norm(out, f"{name}.norm1", p["norm1"])
        _dense(out, f"{name}.attn.qkv", p["attention"]["qkv"])
        _dense(out, f"{name}.attn.proj", p["attention"]["proj"])
        _layer_norm(out, f"{name}.norm2", p["norm2"])
        _dense(out, f"{name}.mlp.fc1", p["mlp_fc1"])
        _dense(out, f"{name}.mlp.fc2", p["mlp_fc2"])
    _layer_norm(out, "norm", params["norm"])
    return out


def state_dict(module: Any, variables: dict, spec: Target) -> dict[str, np.ndarray]:
    """The PyTorch state_dict of `module` (a backbone) with `variables` for `spec`."""
    params, stats = variables["params"], variables.get("batch_stats") or {}
    if isinstance(module, ResNet):
        return resnet_state_dict(module, params, stats)
    if isinstance(module, MobileNetV2):
        return mobilenet_v2_state_dict(module, params, stats)
    if isinstance(module, VisionTransformer):
        return vit_state_dict(module, params, spec.fold_mean_std)
    raise UserError(f"{type(module).__name__} cannot be exported")


def input_mean_std(module: Any, spec: Target) -> tuple[list[float], list[float]]:
    """The per-channel mean/std the exported model expects on RGB images in [0, 1]."""
    if spec.fold_mean_std is not None:
        return list(spec.fold_mean_std), list(spec.fold_mean_std)
    return [float(m) for m in module.mean], [float(s) for s in module.std]
