"""Linear evaluation: a linear classifier on frozen, average-pooled encoder features.

The backbone is frozen, BN included (inference mode, running statistics); its pooled
features feed one Dense layer trained with softmax cross-entropy. Two settings:

- `moco` (He et al. 2020, §4.1): SGD momentum 0.9, LR 30, no weight decay, batch 256,
  100 epochs, LR ×0.1 at 60% and 80% of training.
- `byol` (Grill et al. 2020, App. C.1): SGD Nesterov momentum 0.9, batch 1024, 80 epochs,
  cosine LR, no weight decay, the LR picked from {0.4, 0.3, 0.2, 0.1, 0.05} by top-1 on
  images held out of the training split (10009 as BYOL, at most a tenth of it); the
  classifier is then retrained with that LR on the whole split and scored on the test split.

Simplification, for speed: the features are extracted once, from the evaluation view
(centre crop, no augmentation), and the classifier trains on those fixed vectors; the
papers draw a random crop and flip of every image every epoch. Each epoch visits the
training images in a new random order and drops the last partial batch. The features
stay sharded over every device (`ssljax.eval.bank`); the classifier is replicated.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils.epath import Path

from ssljax.errors import UserError
from ssljax.eval import bank, results
from ssljax.eval import features as feats
from ssljax.models.heads import LinearClassifier
from ssljax.sharding import REPLICATED, SPLIT

BYOL_HOLDOUT = 10_009  # BYOL's local validation set: 10009 images of ImageNet's train split


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One linear-evaluation recipe; `learning_rates` with more than one value is a sweep."""

    learning_rates: tuple[float, ...]
    batch_size: int
    epochs: int
    schedule: str  # 'steps' (×0.1 at each fraction in `decay_at`) or 'cosine'
    decay_at: tuple[float, ...] = ()
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0


PROTOCOLS = {
    "moco": Protocol((30.0,), batch_size=256, epochs=100, schedule="steps", decay_at=(0.6, 0.8)),
    "byol": Protocol(
        (0.4, 0.3, 0.2, 0.1, 0.05), batch_size=1024, epochs=80, schedule="cosine", nesterov=True
    ),
}


def get_protocol(name: str, epochs: int | None = None) -> Protocol:
    if name not in PROTOCOLS:
        raise UserError(f"unknown linear protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    protocol = PROTOCOLS[name]
    if epochs is not None:
        if epochs <= 0:
            raise UserError(f"--epochs must be positive, got {epochs}")
        protocol = dataclasses.replace(protocol, epochs=epochs)
    return protocol


def _learning_rate(protocol: Protocol, lr: float, total_steps: int) -> optax.Schedule:
    if protocol.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, max(total_steps, 1))
    boundaries = {max(int(round(f * total_steps)), 1): 0.1 for f in protocol.decay_at}
    return optax.piecewise_constant_schedule(lr, boundaries)


Features = bank.ShardedFeatures | np.ndarray


def _as_bank(features: Features, labels: np.ndarray | None) -> bank.ShardedFeatures:
    """Sharded features as they are; host features (with their labels) on one device."""
    if isinstance(features, bank.ShardedFeatures):
        return features
    return bank.from_numpy(features, labels)


def train_linear(
    features: Features,
    labels: np.ndarray | None,
    num_classes: int,
    protocol: Protocol,
    lr: float,
    seed: int = 0,
    chunk_steps: int = 100,
):
    """The classifier's parameters after `protocol.epochs` epochs over (features, labels)
    (`labels` None when `features` is a sharded bank, which holds its own).

    The features stay sharded: each step's batch is assembled on every device from the
    devices that hold its rows (`bank.gather_rows`); the classifier is replicated.
    `chunk_steps` steps run as one `lax.scan`.
    """
    data = _as_bank(features, labels)
    mesh = data.mesh
    targets = data.ordered_labels()
    batch_size = min(protocol.batch_size, len(data))
    steps_per_epoch = len(data) // batch_size
    total_steps = steps_per_epoch * protocol.epochs
    classifier = LinearClassifier(num_classes=num_classes)
    params = classifier.init(jax.random.PRNGKey(seed), jnp.zeros((1, data.dim)))
    tx = optax.chain(
        optax.add_decayed_weights(protocol.weight_decay),
        optax.sgd(
            _learning_rate(protocol, lr, total_steps),
            momentum=protocol.momentum,
            nesterov=protocol.nesterov,
        ),
    )
    params, opt_state = bank.replicate(mesh, (params, tx.init(params)))

    def chunk(params, opt_state, rows, layout_rows, y):
        def step(carry, batch):
            params, opt_state = carry
            x = bank.gather_rows(rows, batch[0])

            def loss_fn(p):
                logits = classifier.apply(p, x)
                return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), loss = jax.lax.scan(step, (params, opt_state), (layout_rows, y))
        return params, opt_state, loss

    replicated, split = REPLICATED, SPLIT
    run = jax.jit(
        jax.shard_map(
            chunk,
            mesh=mesh,
            in_specs=(replicated, replicated, split, replicated, replicated),
            out_specs=replicated,
            check_vma=False,
        )
    )
    rng = np.random.default_rng(seed)
    for _ in range(protocol.epochs):
        order = rng.permutation(len(data))[: steps_per_epoch * batch_size]
        order = order.reshape(steps_per_epoch, batch_size)
        for start in range(0, steps_per_epoch, chunk_steps):
            idx = order[start : start + chunk_steps]
            layout_rows, y = bank.replicate(mesh, (data.order[idx], targets[idx]))
            params, opt_state, _ = run(params, opt_state, data.features, layout_rows, y)
            # One chunk in flight: XLA:CPU runs each device's part of a dispatched chunk on
            # a shared thread pool, and with several chunks queued the parts of a later one
            # can hold every thread while they wait in a collective for a device whose part
            # never gets one (seen with 8 simulated devices on 2 cores: the rendezvous
            # aborts the process after 40 s).
            jax.block_until_ready(params)
    return params


def accuracy(
    params,
    features: Features,
    labels: np.ndarray | None,
    num_classes: int,
    chunk: int = 4096,
) -> dict[str, float]:
    """Top-1 and top-5 (top-k with k = min(5, classes)) of the classifier on (features,
    labels) (`labels` None for a sharded bank)."""
    data = _as_bank(features, labels)
    mesh = data.mesh
    classifier = LinearClassifier(num_classes=num_classes)
    k = min(5, num_classes)
    chunk = max(min(chunk, len(data)), 1)

    def hits(params, rows, layout_rows, y, real):
        logits = classifier.apply(params, bank.gather_rows(rows, layout_rows))
        top = jax.lax.top_k(logits, k)[1]
        top1 = (top[:, 0] == y) & real
        top5 = jnp.any(top == y[:, None], axis=1) & real
        return jnp.sum(top1), jnp.sum(top5)

    replicated = REPLICATED
    count = jax.jit(
        jax.shard_map(
            hits,
            mesh=mesh,
            in_specs=(replicated, SPLIT, replicated, replicated, replicated),
            out_specs=replicated,
            check_vma=False,
        )
    )
    params = bank.replicate(mesh, params)
    targets = data.ordered_labels()
    top1 = top5 = 0
    for start in range(0, len(data), chunk):
        end = min(start + chunk, len(data))
        pad = (0, chunk - (end - start))
        inputs = (
            np.pad(data.order[start:end], pad).astype(np.int32),
            np.pad(targets[start:end], pad).astype(np.int32),
            np.pad(np.ones(end - start, bool), pad),
        )
        h1, h5 = bank.local_value(count(params, data.features, *bank.replicate(mesh, inputs)))
        top1, top5 = top1 + int(h1), top5 + int(h5)
    return {"top1": top1 / len(data), "top5": top5 / len(data)}


def select_and_train(
    train_x: Features,
    train_y: np.ndarray | None,
    num_classes: int,
    protocol: Protocol,
    seed: int = 0,
) -> tuple[dict, float, dict[str, float]]:
    """(classifier params, its LR, {LR: held-out top-1}). With several LRs, each is first
    trained on the split minus a held-out part and scored on it; the best is retrained on
    the whole split."""
    data = _as_bank(train_x, train_y)
    if len(protocol.learning_rates) == 1:
        lr = protocol.learning_rates[0]
        return train_linear(data, None, num_classes, protocol, lr, seed), lr, {}
    holdout = min(BYOL_HOLDOUT, len(data) // 10)
    if holdout == 0:
        raise UserError(f"{len(data)} training images are too few to hold some out")
    order = np.random.default_rng(seed).permutation(len(data))
    held, kept = data.subset(order[:holdout]), data.subset(order[holdout:])
    scores = {}
    for lr in protocol.learning_rates:
        params = train_linear(kept, None, num_classes, protocol, lr, seed)
        scores[str(lr)] = accuracy(params, held, None, num_classes)["top1"]
    lr = max(protocol.learning_rates, key=lambda c: scores[str(c)])
    return train_linear(data, None, num_classes, protocol, lr, seed), lr, scores


def evaluate(
    workdir: str | Path,
    protocol: str = "moco",
    checkpoint: int | None = None,
    random_init: bool = False,
    dataset: str | None = None,
    epochs: int | None = None,
    raw_pixels: bool = False,
    network: str | None = None,
) -> dict:
    """Linear top-1/top-5 of a run's encoder (`random_init`: of its untrained network;
    `raw_pixels`: of the flattened evaluation images; `network`: 'online' or 'target',
    default the one the method's paper evaluates).

    Writes `DIR/eval/linear.json` (`linear_byol.json` for the byol protocol; suffixes as
    `ssljax.eval.results` says).
    """
    recipe = get_protocol(protocol, epochs)
    run, variables = feats.load_encoder(
        workdir, checkpoint, random_init or raw_pixels, dataset, network
    )
    network = run.method.network(network)
    num_classes = run.dataset.num_classes
    if not num_classes:
        raise UserError(f"{run.dataset.name} has no labels: no linear evaluation")
    kind = results.features_kind(random_init, raw_pixels)
    tag = None if raw_pixels else results.cache_tag(workdir, checkpoint, random_init, network)
    train = bank.cached(run, variables, run.dataset.memory_split, workdir, tag, raw_pixels)
    test = bank.cached(run, variables, run.dataset.test_split, workdir, tag, raw_pixels)
    params, lr, scores = select_and_train(train, None, num_classes, recipe, run.config.seed)
    result = {
        "metric": "linear",
        "protocol": protocol,
        "workdir": str(workdir),
        "dataset": run.config.dataset.name,
        "features": kind,
        "network": network,
        **accuracy(params, test, None, num_classes),
        "lr": lr,
        "epochs": recipe.epochs,
        "batch_size": min(recipe.batch_size, len(train)),
        "num_train": len(train),
        "num_test": len(test),
    }
    if scores:
        result["holdout_top1_by_lr"] = scores
    if kind == "trained":
        result["checkpoint"] = feats.checkpoint_step(workdir, checkpoint)
    base = "linear" if protocol == "moco" else f"linear_{protocol}"
    suffix = "" if raw_pixels else results.network_suffix(run.method, network)
    results.write_result(
        workdir, results.result_name(workdir, base, dataset, kind, checkpoint, suffix), result
    )
    return result
