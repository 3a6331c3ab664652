"""DINO with SSLight's view sampling (Tan, Saleh, Martinez, ICLR 2023; docs/fidelity.md).

Presets (ImageNet, 200 epochs, B = 1024, MobileNetV2 as in the paper's Tables 1–2):
- `recipe` (default): S_g = S_l = 0.3, LC = 128, α = 0.4 — the paper's view sampling.
- `baseline`: DINO's multi-crop, S_g = S_l = 0.14, LC = 96, α = 1/7 (the plain mean over
  the 14 pairs of 2 global + 6 local crops).
- `recipe_<backbone>`, `baseline_<backbone>` for backbone in `BACKBONES` (Table 3):
  ResNets keep LARS; the ViTs (patch 16) use the SSLight code's `dino_vit_*.yaml`: AdamW
  (base_lr 5e-4, wd cosine 0.04 → 0.4, min LR 1e-5), 10 local crops, DINO's ViT head
  (65536-d, no BN, `norm_last_layer` False, τ_t warm-up 30 epochs), and DINO's own
  ViT baseline S = 0.25 (LC 96, α = 1/11), stochastic depth 0.1 in the student
  (`model.drop_path_rate`, `VIT.DROP_PATH_RATE`); ViT-S/16 and ResNet-50 train with B = 640.
- `fashion_mnist` / `fashion_mnist_baseline`: the small CPU runs compared in
  docs/benchmarks.md (recipe / baseline view sampling, all else equal): ResNet-18 × 1/8
  with the 32-px stem, GC = 32 and LC scaled by 32/224 (18 and 14 px) so both keep the
  ImageNet pixel-scale geometry; B 64, 1 epoch, LARS base_lr 4.0 (LR 1.0), wd 1e-5,
  τ 0.99, head 512-512-128 → 1024 with BN (as the SSLight code's CNN runs), τ_t 0.04
  throughout (DINO's code default), no frozen last layer (see `fashion_mnist_dino`).
- `smoke`: a few steps of a tiny network, for tests.

Every run: 2 global crops at GC = `dataset.image_size` (224), `byol` colour
augmentations (DINO's), blur p (1.0, 0.1, 0.5) and solarize p (0, 0.2, 0) for (global 1,
global 2, locals); LARS base_lr 0.48 (LR 0.48 × B/256), wd 1e-6, 10 warm-up epochs,
cosine to min LR 0.0048 (the SSLight code's CNN yamls); teacher EMA τ 0.996 → 1.

Fields beyond `configlib.base_config()`:
- `multicrop`: `num_global` N_g, `num_local` N_l, `local_size` LC, `global_min_scale`
  S_g, `local_min_scale` 0.05, `local_max_scale` S_l, `p_blur`, `p_solarize`, `alpha`
  (eq. 3), `per_crop_bn` (each crop with its own BN statistics; False: one set per
  resolution, as the reference code) — see `ssljax.data.multicrop`.
- `dino`: the head (`hidden_dims` (2048, 2048), `bottleneck_dim` 256, `out_dim` 4096,
  `use_bn` True, `norm_last_layer` True: the SSLight code's CNN setting,
  `dino_cnn_*.yaml`), `student_temperature` 0.1, `teacher_temperature` 0.07 after a
  linear warm-up from `warmup_teacher_temperature` 0.04 over
  `warmup_teacher_temperature_epochs` 50 (CNN yamls; 30 for ViTs), `center_momentum` 0.9,
  `freeze_last_layer_epochs` 1. The DINO paper's ViT head is 65536-d without BN.
"""

import ml_collections

from ssljax import configlib

BACKBONES = ("mobilenet_v2", "resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small")
VIEW_SAMPLING = {
    # variant: (S_g = S_l, LC at GC = 224, alpha or None for the plain mean over pairs)
    "baseline": (0.14, 96, None),
    "recipe": (0.3, 128, 0.4),
}
VIT_BASELINE_SCALE = 0.25  # DINO's ViT setting, the paper's ViT baseline (§4.3)


def plain_mean_alpha(num_global: int, num_local: int) -> float:
    """The α at which eq. 3 equals the plain mean over pairs (eq. 2): P_gg/(P_gg + P_gl)."""
    p_gg, p_gl = num_global * (num_global - 1), num_global * num_local
    return p_gg / (p_gg + p_gl)


def multicrop_defaults(config):
    """SSLight's shared setting: ImageNet, 200 epochs, B 1024, LARS 0.48, MobileNetV2."""
    config.batch_size = 1024
    config.epochs = 200
    config.model.name = "mobilenet_v2"
    config.augment.preset = "byol"
    config.augment.jitter_style = "torchvision"  # the reference's torchvision ColorJitter
    config.model.zero_init_residual = "none"  # its torchvision-style ResNet's default
    config.multicrop = ml_collections.ConfigDict(
        {
            "num_global": 2,
            "num_local": 6,
            "local_size": 96,
            "global_min_scale": 0.14,
            "local_min_scale": 0.05,
            "local_max_scale": 0.14,
            "p_blur": (1.0, 0.1, 0.5),
            "p_solarize": (0.0, 0.2, 0.0),
            "alpha": 1 / 7,
            "per_crop_bn": True,
        }
    )
    config.optimizer.name = "lars"
    config.optimizer.base_lr = 0.48
    config.optimizer.weight_decay = 1e-6
    config.optimizer.warmup_epochs = 10.0
    config.optimizer.schedule = "cosine"
    config.optimizer.min_lr = 0.0048  # the SSLight code's CNN yamls: MIN_LR 0.0048


def view_sampling(config, variant: str, reference_size: int = 224):
    """Set S_g = S_l, LC and α of `variant`; LC is scaled by GC/`reference_size` so that
    a smaller GC keeps the pixel-scale geometry of the paper's 224/LC."""
    scale, local_size, alpha = VIEW_SAMPLING[variant]
    if variant == "baseline" and config.model.name.startswith("vit"):
        scale = VIT_BASELINE_SCALE
    mc = config.multicrop
    mc.global_min_scale = mc.local_max_scale = scale
    mc.local_size = round(local_size * config.dataset.image_size / reference_size)
    mc.alpha = plain_mean_alpha(mc.num_global, mc.num_local) if alpha is None else alpha


def dino_defaults(config):
    multicrop_defaults(config)
    configlib.bn_group(config)
    config.method = "dino"
    config.tau_base = 0.996
    config.tau_schedule = "cosine"
    config.dino = ml_collections.ConfigDict(
        {
            "hidden_dims": (2048, 2048),
            "bottleneck_dim": 256,
            "out_dim": 4096,  # dino_cnn_*.yaml: OUTPUT_DIM 4096, USE_BN_IN_HEAD True
            "use_bn": True,
            "norm_last_layer": True,
            "student_temperature": 0.1,
            "teacher_temperature": 0.07,
            "warmup_teacher_temperature": 0.04,
            "warmup_teacher_temperature_epochs": 50.0,  # dino_cnn_*.yaml
            "center_momentum": 0.9,
            "freeze_last_layer_epochs": 1.0,
        }
    )


def use_backbone(config, name: str):
    """Table 3's backbones; the ViTs with DINO's ViT optimiser and 10 local crops."""
    config.model.name = name
    if name in ("resnet50", "vit_small"):
        config.batch_size = 640  # §4.3: "due to hardware limitations"
    if name.startswith("vit"):
        config.model.patch_size = 16
        config.model.drop_path_rate = 0.1  # dino_vit_*.yaml: VIT.DROP_PATH_RATE, student only
        config.optimizer.name = "adamw"
        config.optimizer.base_lr = 5e-4
        config.optimizer.weight_decay = 0.04
        config.optimizer.weight_decay_end = 0.4  # dino_vit_*.yaml: cosine 0.04 → 0.4
        config.optimizer.min_lr = 1e-5
        config.multicrop.num_local = 10
        config.dino.norm_last_layer = False
        config.dino.out_dim = 65536  # dino_vit_*.yaml: DINO's ViT head, no BN
        config.dino.use_bn = False
        config.dino.warmup_teacher_temperature_epochs = 30.0


def _preset(variant: str, backbone: str | None = None):
    def apply(config):
        if backbone is not None:
            use_backbone(config, backbone)
        view_sampling(config, variant)

    return apply


def small_cpu(config, variant: str):
    """Fashion-MNIST on 2 CPU cores: ResNet-18 × 1/8 with the 32-px stem, GC 32, B 64,
    1 epoch (937 steps). A multi-crop image costs ~1.7 BYOL images (8 crops through the
    student, 2 through the teacher): 48–56 images/s were measured under load 8 on the 2
    shared cores, so one epoch takes ~20 min there and should take well under 15 on
    quiet cores (not measured). B 64 buys steps: 937 updates instead of 468 at B 128."""
    configlib.small_cpu_model(config, width=0.125)
    config.dataset.name = "fashion_mnist"
    config.dataset.shuffle_buffer = 10_000
    config.batch_size = 64
    config.epochs = 1
    config.optimizer.base_lr = 1.0  # LR 0.25, the LR of the one probe run (B 128, base 0.48)
    config.optimizer.weight_decay = 1e-5
    config.optimizer.warmup_epochs = 0.1
    config.optimizer.min_lr = 0.0  # as the runs recorded in docs/benchmarks.md
    if "tau_base" in config:  # an EMA target (DINO's teacher, MoCo's key encoder)
        config.tau_base = 0.99
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500
    view_sampling(config, variant)


def fashion_mnist_dino(config, variant: str):
    """`small_cpu` with a small DINO head. Its first version (head without BN, base_lr 1.0,
    τ_t 0.04 → 0.07 over 0.15 epochs) collapsed to a uniform teacher (loss = teacher
    entropy = log K from step ~250). The random ResNet's pooled ReLU features are alike
    (mean pairwise cosine 0.73 on a batch), the trunc-normal(0.02) head without BN keeps
    them alike and small, and the head's biases, which LARS leaves un-adapted at the raw
    LR, grew until the bottleneck bias (norm 2.7) outweighed the image-dependent part: the
    centred teacher then saw one vector for every image, and τ_t rising to 0.07 within 140
    steps finished the flattening. BN in the head and τ_t 0.04 each delay the collapse,
    together they avoid it; base_lr 4.0 lets 937 LARS steps (relative step lr·η = 1e-3)
    move the weights (tests/test_dino.py, `…does_not_collapse…`). A 226-s probe of
    `fashion_mnist_baseline` (load 2–4.7, 113 images/s) reached step 376 with loss 6.38 and
    teacher entropy 5.96 (log K = 6.93), falling; its 20-NN top-1 was 77.1% (random init
    64.37%). The full epoch was not run."""
    small_cpu(config, variant)
    config.dino.hidden_dims = (512, 512)
    config.dino.bottleneck_dim = 128
    config.dino.out_dim = 1024
    config.dino.use_bn = True
    config.dino.warmup_teacher_temperature = config.dino.teacher_temperature = 0.04
    config.dino.warmup_teacher_temperature_epochs = 0.0
    config.dino.freeze_last_layer_epochs = 0.0
    config.optimizer.base_lr = 4.0


def smoke_multicrop(config):
    """configlib.smoke with 6 local crops of 16 px (GC 32) and the recipe's scales."""
    configlib.smoke(config)
    view_sampling(config, "recipe")
    config.multicrop.local_size = 16


def smoke(config):
    smoke_multicrop(config)
    config.dino.hidden_dims = (32,)
    config.dino.bottleneck_dim = 16
    config.dino.out_dim = 64


PRESETS = {
    "baseline": _preset("baseline"),
    "recipe": _preset("recipe"),
    **{f"{v}_{b}": _preset(v, b) for v in VIEW_SAMPLING for b in BACKBONES},
    "fashion_mnist": lambda config: fashion_mnist_dino(config, "recipe"),
    "fashion_mnist_baseline": lambda config: fashion_mnist_dino(config, "baseline"),
    "smoke": smoke,
}


def get_config(arg=None):
    config = configlib.base_config()
    dino_defaults(config)
    return configlib.apply_preset(config, arg, PRESETS, default="recipe")
