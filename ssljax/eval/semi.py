"""Semi-supervised evaluation: fine-tune the whole encoder and a linear head on 1% or 10%
of the labelled training images, then score top-1/top-5 on the test split.

The recipe is SimCLR's (Chen et al. 2020, App. B.5): SGD with Nesterov momentum 0.9, no
weight decay, LR = 0.05 × B / 256 without warm-up, 60 epochs on 1% and 30 on 10%, random
resized crop and flip only. The LR decays with a cosine (our choice; the paper does not
say). The paper's batch is 4096 (ImageNet); on other datasets the default is 256, so that
Fashion-MNIST's 1% (600 images) still makes two steps an epoch. BN is trained (batch
statistics, synchronised as in pre-training); the test split is scored with the running
statistics.

Subsets are class-balanced and seeded: every class contributes round(fraction × N / C)
images (at most all of its own), drawn by one seeded permutation per class, so the 1%
subset is contained in the 10% one and a seed always names the same images.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils.epath import Path

from ssljax.data import augment, pipeline
from ssljax.errors import UserError
from ssljax.eval import features as feats
from ssljax.eval import linear, results, supervised
from ssljax.models.heads import LinearClassifier
from ssljax.sharding import check_batch_size

FINETUNE_VIEW = augment.crop_and_flip(0.08)


@dataclasses.dataclass(frozen=True)
class Recipe:
    fraction: float
    epochs: int
    batch_size: int
    lr: float  # the actual LR (base 0.05 scaled by batch / 256)
    momentum: float = 0.9
    nesterov: bool = True


def get_recipe(
    fraction: float, dataset: str, epochs: int | None = None, batch_size: int | None = None
) -> Recipe:
    """SimCLR's fine-tuning recipe for `fraction` (0.01 or 0.1), with optional overrides."""
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"--fraction must be in (0, 1], e.g. 0.01 or 0.1; got {fraction}")
    default_epochs = 60 if fraction <= 0.01 else 30
    epochs = default_epochs if epochs is None else epochs
    if epochs <= 0:
        raise UserError(f"--epochs must be positive, got {epochs}")
    if batch_size is None:
        batch_size = 4096 if dataset == "imagenet2012" else 256
    return Recipe(fraction, epochs, batch_size, lr=0.05 * batch_size / 256)


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced `fraction` of `labels` (ids ≥ 0), fixed by `seed`.

    Each class gives max(1, round(fraction × N / C)) images, or all of its own if fewer;
    they are the first of one seeded permutation per class, so a smaller fraction's subset
    is contained in a larger one's.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels[labels >= 0])
    if len(classes) == 0:
        raise UserError("no labelled images to draw a semi-supervised subset from")
    per_class = max(1, int(round(fraction * len(labels) / len(classes))))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:  # sorted: the draw for class c does not depend on dict order
        members = np.flatnonzero(labels == c)
        chosen.append(members[rng.permutation(len(members))[:per_class]])
    return np.sort(np.concatenate(chosen))


class FinetuneNetwork(nn.Module):
    """The pre-trained encoder and a linear head: logits of the fine-tuned classifier."""

    encoder: nn.Module
    head: nn.Module

    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        return self.head(self.encoder(images, train=train)["pooled"])


def finetune(run: feats.EvalRun, variables: Any, subset: np.ndarray, recipe: Recipe, seed: int):
    """(encoder variables, head params, mean loss of the last epoch) after fine-tuning."""
    num_classes = run.dataset.num_classes
    check_batch_size(recipe.batch_size, run.mesh)
    steps_per_epoch = len(subset) // recipe.batch_size
    if steps_per_epoch == 0:
        raise UserError(
            f"the {len(subset)}-image subset is smaller than one batch of {recipe.batch_size}; "
            "lower --batch-size"
        )
    total_steps = steps_per_epoch * recipe.epochs
    schedule = optax.cosine_decay_schedule(recipe.lr, total_steps)
    tx = optax.sgd(schedule, momentum=recipe.momentum, nesterov=recipe.nesterov)
    size = run.config.dataset.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    pooled = jax.eval_shape(
        lambda v: run.method.encoder.apply(v, images, train=False)["pooled"], variables
    )
    head = LinearClassifier(num_classes=num_classes)
    head_params = head.init(jax.random.PRNGKey(seed), jnp.zeros(pooled.shape, jnp.float32))
    network = FinetuneNetwork(run.method.encoder, head)
    stats = variables["batch_stats"]
    start = {
        "params": {"encoder": variables["params"], "head": head_params["params"]},
        "batch_stats": {"encoder": stats} if stats else {},  # a ViT has none
    }
    batches = pipeline.labelled_batches(
        run.config,
        run.dataset.memory_split,
        recipe.batch_size,
        seed=seed,
        view=FINETUNE_VIEW,
        subset=subset,
    )
    from tqdm import tqdm

    def progress(steps):
        return tqdm(
            steps,
            desc="fine-tuning",
            unit="step",
            mininterval=5.0,
            disable=jax.process_index() != 0,
        )

    trained, losses = supervised.train(
        network, start, tx, schedule, run.mesh, batches, total_steps, progress
    )
    last_epoch = float(np.mean(jax.device_get(losses[-steps_per_epoch:])))
    encoder = {
        "params": trained["params"]["encoder"],
        "batch_stats": trained["batch_stats"].get("encoder", {}),
    }
    return encoder, {"params": trained["params"]["head"]}, last_epoch, total_steps


def evaluate(
    workdir: str | Path,
    fraction: float = 0.01,
    checkpoint: int | None = None,
    random_init: bool = False,
    dataset: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    network: str | None = None,
) -> dict:
    """Fine-tune a run's encoder (`random_init`: its untrained network; `network`: 'online'
    or 'target', default the one the method's paper evaluates) on a `fraction` subset and
    score it; writes `DIR/eval/semi_<pct>pct*.json`."""
    run, variables = feats.load_encoder(workdir, checkpoint, random_init, dataset, network)
    network = run.method.network(network)
    num_classes = run.dataset.num_classes
    if not num_classes:
        raise UserError(f"{run.dataset.name} has no labels: no semi-supervised evaluation")
    recipe = get_recipe(fraction, run.config.dataset.name, epochs, batch_size)
    labels = pipeline.split_labels(run.config, run.dataset.memory_split)
    subset = balanced_subset(labels, fraction, seed)
    encoder, head, loss, steps = finetune(run, variables, subset, recipe, seed)
    test_x, test_y = feats.extract_features(run, encoder, run.dataset.test_split)
    kind = results.features_kind(random_init)
    result = {
        "metric": "semi",
        "workdir": str(workdir),
        "dataset": run.config.dataset.name,
        "features": kind,
        "network": network,
        "fraction": fraction,
        **linear.accuracy(head, test_x, test_y, num_classes),
        "num_train": int(len(subset)),
        "per_class": int(np.bincount(labels[subset]).max()),
        "num_test": int(len(test_x)),
        "seed": seed,
        "epochs": recipe.epochs,
        "steps": steps,
        "batch_size": recipe.batch_size,
        "lr": recipe.lr,
        "final_train_loss": loss,
    }
    if kind == "trained":
        result["checkpoint"] = feats.checkpoint_step(workdir, checkpoint)
    base = f"semi_{fraction * 100:g}pct".replace(".", "p")
    suffix = results.network_suffix(run.method, network)
    results.write_result(
        workdir, results.result_name(workdir, base, dataset, kind, checkpoint, suffix), result
    )
    return result
