"""Momentum² Teacher (Li, Liu & Sun 2021): BYOL with a Momentum-BN teacher.

Fields beyond BYOL's heads and EMA target (`configlib.byol_heads`, `configlib.ema_target`):
- `student_bn_group`: which images share the student's BN statistics, 'local' (per device)
  or a group size n as a string ("32"), independent of the device count; the paper's
  "BN = 32 / 128" (Tables 2, 4). There is no `bn_group`: an override of it is refused.
- `teacher_bn`: 'momentum' (M²T) or 'batch' (ordinary BN, the Table 1 baselines).
- `teacher_bn_group`: which images give the teacher's batch statistics ('local' = the
  per-device batch by default; the presets set the paper's per-GPU count).
- `alpha_base` = 1, `alpha_schedule` = 'cosine': α = α_base·(cos(πk/K) + 1)/2 (eq. 8);
  'constant' keeps α = α_base (Table 6).
- `momentum_bn_epsilon` = 1e-5 (PyTorch's default, the authors' framework).
- `tau_base` is the paper's 1 − m_base: the teacher weights follow
  m = 1 − (1 − tau_base)·(cos(πk/K) + 1)/2. `ssljax.methods.m2_teacher.scale_for_batch`
  applies the batch-size rule (§4.2: LR × k and (1 − m_base) × k).

Presets:
- `imagenet` (default): §4, 300 epochs. ResNet-50, projector 4096/256, B = 4096 (128 GPUs
  × 32), student and teacher BN over 32 images, LARS base_lr 0.3 (×B/256), wd 1e-6 (the
  code's exps; the paper's text says 1.5e-6), 10 warm-up epochs, cosine; m_base 0.01
  (tau_base 0.99); `byol` augmentations at 224 px. Paper: 72.0 top-1 (Table 2, BN = 32).
- `imagenet_single_machine`: §4.3, one machine of 8 GPUs. B = 1024, BN over 128 images,
  SGD momentum 0.9, LR 0.05 × B/256, wd 1e-4, cosine, tau_base 0.99 (the authors'
  `..._1mm_099` exps). Paper: 73.8 top-1 at 300 epochs (Table 5).
- `stl10`: §3.1/3.4, the ablation set-up of Table 1. ResNet-18 at 96 px, projector and
  predictor 512/128, B = 2048 (64 GPUs × 32), BN over 32 images, SGD momentum 0.9, LR
  0.1 × B/256, wd 1e-4, 10 warm-up epochs (the paper starts warm-up at 0.001× the LR, we
  at 0), cosine, 400 epochs, m_base 0.032 (tau_base 0.968). Paper: 88.18 (BN / Momentum BN).
- `fashion_mnist`: the small CPU run (ResNet-18 ×0.25 — twice the width of BYOL's preset —
  small stem, 32 px, B = 256, 10 epochs, heads 512/128) with student and teacher BN over
  groups of 16 images; `benchmarks/m2t_table1.sh` varies the BN choices on it.
- `smoke`: a few steps of a tiny network, for tests; BN groups of 4.
"""

from ssljax import configlib


def m2_teacher_fields(config):
    configlib.byol_heads(config)
    configlib.ema_target(config)
    config.method = "m2_teacher"
    config.student_bn_group = "32"
    config.teacher_bn = "momentum"
    config.teacher_bn_group = "local"
    config.alpha_base = 1.0
    config.alpha_schedule = "cosine"
    config.momentum_bn_epsilon = 1e-5
    config.augment.jitter_style = "torchvision"  # the reference's torchvision ColorJitter
    config.model.zero_init_residual = "none"  # resnet_mbn.py: zero_init_residual=False
    config.tau_base = 0.99  # 1 − m_base, m_base = 0.01


def imagenet(config):
    config.batch_size = 4096
    config.student_bn_group = "32"
    config.teacher_bn_group = "32"


def imagenet_single_machine(config):
    config.batch_size = 1024
    config.student_bn_group = "128"
    config.teacher_bn_group = "128"
    config.optimizer.name = "sgd"
    config.optimizer.base_lr = 0.05
    config.optimizer.weight_decay = 1e-4
    config.optimizer.momentum = 0.9


def stl10(config):
    config.dataset.name = "stl10"
    config.dataset.image_size = 96
    config.model.name = "resnet18"
    config.batch_size = 2048
    config.epochs = 400
    config.student_bn_group = "32"
    config.teacher_bn_group = "32"
    config.projector.hidden_dims = (512,)
    config.projector.out_dim = 128
    config.predictor.hidden_dims = (512,)
    config.predictor.out_dim = 128
    config.optimizer.name = "sgd"
    config.optimizer.base_lr = 0.1
    config.optimizer.weight_decay = 1e-4
    config.optimizer.momentum = 0.9
    config.optimizer.warmup_epochs = 10.0
    config.tau_base = 1.0 - 0.032


def fashion_mnist(config):
    configlib.small_cpu_model(config, width=0.25)
    config.dataset.name = "fashion_mnist"
    config.dataset.shuffle_buffer = 10_000
    config.batch_size = 256
    config.epochs = 10
    config.student_bn_group = "16"
    config.teacher_bn_group = "16"
    config.optimizer.warmup_epochs = 1.0
    config.projector.hidden_dims = (512,)
    config.projector.out_dim = 128
    config.predictor.hidden_dims = (512,)
    config.predictor.out_dim = 128
    config.log_every_steps = 20
    config.checkpoint_every_steps = 500


def smoke(config):
    configlib.smoke(config)
    config.student_bn_group = "4"
    config.teacher_bn_group = "4"


PRESETS = {
    "imagenet": imagenet,
    "imagenet_single_machine": imagenet_single_machine,
    "stl10": stl10,
    "fashion_mnist": fashion_mnist,
    "smoke": smoke,
}


def get_config(arg=None):
    config = configlib.base_config()
    m2_teacher_fields(config)
    return configlib.apply_preset(config, arg, PRESETS, default="imagenet")
