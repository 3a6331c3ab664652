"""Shared config defaults and preset handling for `configs/*.py`.

A config file defines `get_config(arg=None)`: it starts from `base_config()` (the fields
every method reads: data, backbone, optimiser, loop, evaluation; ImageNet values), adds
the fields its method reads (the sections below, `bn_group`, `byol_heads`, `ema_target`,
`detcon_masks`, and its own), then applies the preset named by `arg`
(`configs/byol.py:fashion_mnist`). A config holds only fields its method reads, so an
override of any other field is refused (`main.py`). Fields are documented where they
are set.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import ml_collections
from ml_collections import config_dict

from ssljax.errors import UserError


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = ""  # a module of ssljax.methods, set by the config file
    c.preset = ""  # filled in by `apply_preset`, recorded with the run
    c.seed = 0
    c.batch_size = 4096  # global batch B over all devices and hosts
    c.epochs = 300
    c.total_steps = 0  # 0: epochs × steps_per_epoch; > 0 overrides the epochs

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "imagenet2012"
    c.dataset.data_dir = config_dict.placeholder(str)  # default: $TFDS_DATA_DIR or tfds's
    c.dataset.train_split = config_dict.placeholder(str)  # default: the registry's split
    c.dataset.image_size = 224
    c.dataset.shuffle_buffer = 50_000

    c.augment = ml_collections.ConfigDict()
    c.augment.preset = "byol"  # one of ssljax.data.augment.PRESETS (docs/fidelity.md)
    # Optional overrides of single preset fields (None keeps the paper's value):
    c.augment.s_min = config_dict.placeholder(float)  # smallest crop area fraction
    c.augment.p_blur = config_dict.placeholder(tuple)  # (view 1, view 2)
    c.augment.p_solarize = config_dict.placeholder(tuple)  # (view 1, view 2)
    # 'tf' (BYOL/DetCon/SimCLR code) | 'torchvision' (ColorJitter: MoCo, M2T, SaGe, SSLight)
    c.augment.jitter_style = config_dict.placeholder(str)

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet50"  # resnet18..resnet200 | mobilenet_v2 | vit_tiny | vit_small
    c.model.width = 1.0  # channel multiplier
    c.model.small_stem = False  # 3×3 stride-1 stem, no max-pool (32-px images)
    # Residual blocks whose last BN scale starts at 0, as the method's reference ResNet:
    # 'bottleneck' (Haiku: BYOL, DetCon), 'all' (SimCLR), 'none' (torchvision models).
    c.model.zero_init_residual = "bottleneck"
    c.model.bn_momentum = 0.9  # running-statistics decay (BYOL reference: 0.9)
    c.model.dtype = "float32"  # compute dtype; "bfloat16" on TPU
    c.model.patch_size = 16  # ViT patch side (e.g. 4 for 32-px images)
    c.model.depth = 0  # ViT blocks; 0: the named model's (12)
    c.model.drop_path_rate = 0.0  # ViT stochastic depth in training (last block's rate)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "lars"
    c.optimizer.base_lr = 0.3  # LR = base_lr × B / 256 (300 epochs; 0.2 for 1000)
    c.optimizer.weight_decay = 1e-6  # (1.5e-6 for 1000 epochs)
    c.optimizer.momentum = 0.9
    c.optimizer.trust_coefficient = 1e-3  # LARS η
    c.optimizer.warmup_epochs = 10.0
    c.optimizer.schedule = "cosine"  # 'cosine' | 'steps' | 'constant'
    c.optimizer.min_lr = 0.0  # where 'cosine' ends (absolute LR)
    # With a value: weight decay follows a cosine from weight_decay to it (adamw, sgd).
    c.optimizer.weight_decay_end = config_dict.placeholder(float)
    c.optimizer.decay_at = ()  # fractions of training, for 'steps'
    c.optimizer.decay_factor = 0.1

    c.online_probe = True  # linear classifier on stop-gradient features, when labelled
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    # A step whose loss or gradients are not finite: 'skip' leaves the state as it was (the
    # step still counts) and stops the run after `nonfinite_max_skips` skips in a row;
    # 'stop' stops at the first one. Either way no checkpoint holds non-finite weights.
    c.nonfinite = "skip"
    c.nonfinite_max_skips = 10
    # Wall-time budget of one `train()` call in seconds (0: none): stop cleanly with a
    # checkpoint once spent; running again resumes. For same-budget comparisons.
    c.max_train_seconds = 0.0

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 512
    c.eval.knn_k = 20
    c.eval.knn_temperature = 0.07
    c.eval.knn_after_training = False  # main.py prints k-NN top-1 vs random init at the end
    return c


def bn_group(config: ml_collections.ConfigDict, value: str = "sync") -> None:
    """`bn_group`: which images share BN statistics, 'sync' (the global batch), 'local'
    (each device's) or n (groups of n images, independent of the device count)."""
    config.bn_group = value


def byol_heads(config: ml_collections.ConfigDict) -> None:
    """BYOL's heads: Linear 4096 → BN → ReLU → Linear 256 (no bias on the last layer)."""
    config.projector = ml_collections.ConfigDict({"hidden_dims": (4096,), "out_dim": 256})
    config.predictor = ml_collections.ConfigDict({"hidden_dims": (4096,), "out_dim": 256})


def ema_target(config: ml_collections.ConfigDict, tau_base: float = 0.99) -> None:
    """An EMA target network: τ from `tau_base` at step 0 (BYOL: 0.99 for 300 epochs, 0.996
    for 1000) to 1 on a cosine (`tau_schedule='cosine'`), or constant ('constant')."""
    config.tau_base = tau_base
    config.tau_schedule = "cosine"


def byol_fields(config: ml_collections.ConfigDict) -> None:
    """What BYOL reads beyond `base_config`: sync BN, its heads, its EMA target."""
    config.method = "byol"
    bn_group(config)
    byol_heads(config)
    ema_target(config)


def detcon_masks(config: ml_collections.ConfigDict) -> None:
    """DetCon's segmentation masks (`ssljax.data.masks`); FH on ImageNet (`fh_masks`)."""
    c = config
    c.masks = ml_collections.ConfigDict()
    c.masks.kind = "none"  # 'none' | 'fh' | 'grid' | 'global' | 'ground_truth' (coco_panoptic)
    # Felzenszwalb–Huttenlocher scale(s) (ImageNet: 1000); with several, each image draws
    # one per epoch (same for both views).
    c.masks.fh_scales = (1000,)
    c.masks.fh_sigma = 0.8  # FH Gaussian pre-smoothing
    c.masks.fh_min_size = 1000  # FH smallest segment in pixels; 0: = each scale (COCO)
    c.masks.grid_size = 4  # n of the n×n `grid` masks
    c.masks.grid = 7  # feature grid g the masks are pooled to (layer4: 7 at 224 px)
    c.masks.num_samples = 16  # segment ids sampled per image (with replacement)
    # 'independent' (the reference): each view draws its own ids among the segments it
    # shows; 'shared': one draw among the segments both views show, used for both.
    c.masks.sampling = "independent"
    c.masks.compute_in_pipeline = False  # compute FH in tf.data instead of reading the cache
    c.masks.cache_dir = config_dict.placeholder(str)  # default: <data_dir>/ssljax_masks
    fh_masks(config)


def apply_preset(
    config: ml_collections.ConfigDict,
    arg: str | None,
    presets: dict[str, Callable[[ml_collections.ConfigDict], None]],
    default: str,
) -> ml_collections.ConfigDict:
    """Apply the preset named by `arg` (or `default`); several names separated by commas
    (`fashion_mnist,baseline`) apply in order. An unknown name is a UserError, and so is a
    preset that sets a field the config does not hold (the method does not read it)."""
    names = (arg or default).split(",")
    unknown = [name for name in names if name not in presets]
    if unknown:
        raise UserError(f"unknown preset {unknown[0]!r}; choose one of {sorted(presets)}")
    config.lock()
    try:
        for name in names:
            presets[name](config)
    except AttributeError as e:  # ml_collections: 'Key "x" does not exist and cannot be added'
        field = re.search(r'Key "([^"]+)"', str(e))
        field = field.group(1) if field else str(e)[:80]
        raise UserError(
            f"preset {name!r} sets {field!r}, which the {config.method} method does not read"
        ) from None
    finally:
        config.unlock()
    config.preset = ",".join(names)
    return config


def small_cpu_model(config: ml_collections.ConfigDict, width: float) -> None:
    """A ResNet-18 with the small-image stem at 32 px: the shape of every CPU preset.

    Every residual block starts with a zero last-BN scale, whatever the method's reference
    network does at ImageNet scale (docs/fidelity.md): the CPU presets are ssljax's own
    settings, and with live residual branches this small network is already a strong
    k-NN feature extractor untrained. Measured on BYOL's `fashion_mnist` run (20-NN on
    Fashion-MNIST, trained vs random init): zero-initialised blocks 79.33% vs 64.37%;
    live basic blocks, as BYOL's Haiku ResNet would leave them, 78.02% vs 78.48%.
    """
    config.model.name = "resnet18"
    config.model.width = width
    config.model.small_stem = True
    config.model.zero_init_residual = "all"
    config.dataset.image_size = 32


def smoke(config: ml_collections.ConfigDict) -> None:
    """Seconds, for tests and the CLI check: a tiny ResNet-18 on Fashion-MNIST, 6 steps."""
    small_cpu_model(config, width=1 / 16)
    config.dataset.name = "fashion_mnist"
    config.dataset.train_split = "train[:1024]"
    config.dataset.shuffle_buffer = 1024
    config.batch_size = 32
    config.total_steps = 6
    config.optimizer.warmup_epochs = 0.0
    for head in ("projector", "predictor"):
        if head in config:
            config[head].hidden_dims = (64,)
            config[head].out_dim = 32
    config.log_every_steps = 2
    config.checkpoint_every_steps = 3
    config.eval.batch_size = 256
    # Zero-initialised residual blocks (small_cpu_model) also keep the tests' 8-device =
    # 1-device comparisons at float32 noise (with live residual branches, near-zero BN
    # biases of this tiny network drift ~1e-4 apart).


def load_module(path):
    """A config file as a module, so that one config can build on another's presets
    (DetCon_B's on BYOL's); config files are loaded by path, not imported as a package."""
    import importlib.util
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    module_spec = importlib.util.spec_from_file_location(f"ssljax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def fh_masks(config: ml_collections.ConfigDict) -> None:
    """DetCon's ImageNet masks (§3.2): FH scale 1000, σ 0.8, min_size 1000 on the full
    image, pooled to the 7×7 layer4 grid, 16 ids sampled per image."""
    config.masks.kind = "fh"
    config.masks.fh_scales = (1000,)
    config.masks.fh_sigma = 0.8
    config.masks.fh_min_size = 1000
    config.masks.grid = 7
    config.masks.num_samples = 16


def small_image_masks(config: ml_collections.ConfigDict) -> None:
    """FH masks for 28-px images, computed in the pipeline: scale 100, σ 0.8, min_size 20
    give ~8 segments an image, 2–3 owning a cell of a view's 4×4 grid (32-px stem)."""
    config.masks.fh_scales = (100,)
    config.masks.fh_min_size = 20
    config.masks.grid = 4
    config.masks.compute_in_pipeline = True


def load(spec: str) -> ml_collections.ConfigDict:
    """The config of `path/to/config.py[:preset]`, as `--config=` would load it."""
    path, _, preset = spec.partition(":")
    return load_module(path).get_config(preset or None)
