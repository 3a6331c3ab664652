"""SaGe's perceptual test (Xu et al. 2021, §4.4, Table 7): are reconstructions recognisable?

    python -m ssljax.eval perceptual --workdir=DIR [--classifier-dir=C] [--classifier-epochs=N]

A SaGe run's encoder and decoder (inference mode) reconstruct every held-out image (the
dataset's test split, the evaluation view); a supervised classifier of the same dataset
labels the originals and the reconstructions. The result has both accuracies — top-1 on
datasets of at most 10 classes, top-5 otherwise, as the paper on ImageNet (both are kept)
— and the pixel MSE on the [−1, 1] scale the decoder is trained on. It is written to
`DIR/eval/perceptual.json`, with `perceptual.png` (originals above their reconstructions)
and `perceptual_grid.npz` (the same images, for figures that compare runs).

The classifier is the run's backbone (`config.model`) with a linear head, trained with
labels by this command: SGD (Nesterov momentum 0.9, LR 0.1 × B/256 on a cosine, weight
decay 5e-4 on kernels), random horizontal flips, on the evaluation view of the training
split, on the engine's sharded step with BN statistics over the global batch (`sync`;
`ssljax.eval.supervised`). It is cached in --classifier-dir (default
`DIR/eval/perceptual_classifier`) with a JSON of what it was trained on, and loaded from
there next time; share one directory
between runs to compare them with the same classifier. The paper uses a supervised
ResNet-50 on ImageNet; training one here takes what a supervised ImageNet run takes.
"""

from __future__ import annotations

import argparse
import io
import json
import math

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorflow as tf
from etils.epath import Path
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from ssljax import files
from ssljax.data import pipeline, registry
from ssljax.errors import UserError
from ssljax.eval import supervised
from ssljax.eval.features import EvalRun, evaluation_run
from ssljax.methods import base
from ssljax.optim import adaptation_mask
from ssljax.run import load_config, load_run
from ssljax.sharding import SPLIT, check_batch_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--split",
        default=None,
        help="held-out split to reconstruct (default: the dataset's test split)",
    )
    parser.add_argument(
        "--classifier-dir",
        default=None,
        help="where the supervised classifier is cached (default: DIR/eval/perceptual_classifier)",
    )
    parser.add_argument(
        "--classifier-epochs",
        type=int,
        default=5,
        help="epochs of the supervised classifier when it is trained (5)",
    )
    parser.add_argument(
        "--classifier-split",
        default=None,
        help="its training split (default: the dataset's labelled train split)",
    )
    parser.add_argument("--classifier-batch-size", type=int, default=256)
    parser.add_argument(
        "--grid-images", type=int, default=16, help="held-out images shown in perceptual.png (16)"
    )


class Classifier(nn.Module):
    """A backbone and a linear head: logits of the supervised perceptual classifier."""

    backbone: nn.Module
    num_classes: int

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        pooled = self.backbone(images, train=train)["pooled"]
        return nn.Dense(self.num_classes, name="head")(pooled.astype(jnp.float32))


def load_sage(workdir, checkpoint=None, random_init=False, dataset=None):
    """(run, {'params', 'batch_stats': {'encoder', 'decoder'}}, step) of a SaGe run."""
    config = load_config(workdir)
    if config.method != "sage":
        raise UserError(
            f"{workdir} is a {config.method} run: the perceptual test needs a SaGe run's "
            "decoder (configs/sage.py; generation_weight=0 trains one on frozen BYOL features)"
        )
    loaded = load_run(workdir, checkpoint, random_init=random_init)
    state = loaded.state
    parts = ("encoder", "decoder")
    variables = {
        "params": {k: state.params[k] for k in parts},
        "batch_stats": {k: state.batch_stats.get(k, {}) for k in parts},
    }
    return evaluation_run(loaded, dataset), variables, loaded.step


def train_classifier(run: EvalRun, split: str, epochs: int, batch_size: int, seed: int = 0):
    """The classifier's variables after `epochs` supervised epochs on `split`."""
    config, mesh = run.config, run.mesh
    check_batch_size(batch_size, mesh)
    _, builder = registry.get_dataset(config.dataset.name, config.dataset.data_dir)
    steps_per_epoch = registry.split_num_examples(builder, split) // batch_size
    if steps_per_epoch == 0 or epochs <= 0:
        raise UserError(
            f"cannot train the classifier: {epochs} epochs of {split!r} in "
            f"batches of {batch_size}; lower --classifier-batch-size or raise epochs"
        )
    model = classifier_model(run)
    size = config.dataset.image_size
    dummy = jnp.zeros((1, size, size, 3), jnp.float32)
    variables = jax.jit(model.init, static_argnames="train")(
        jax.random.PRNGKey(seed), dummy, train=False
    )
    schedule = optax.cosine_decay_schedule(0.1 * batch_size / 256, steps_per_epoch * epochs)
    tx = optax.chain(
        optax.add_decayed_weights(5e-4, mask=adaptation_mask),
        optax.sgd(schedule, momentum=0.9, nesterov=True),
    )
    batches = pipeline.labelled_batches(config, split, batch_size, seed=seed)
    variables, _ = supervised.train(
        model, variables, tx, schedule, mesh, batches, steps_per_epoch * epochs
    )
    return variables


def classifier_model(run: EvalRun) -> Classifier:
    """The classifier; trained on the engine's sharded step with BN statistics over the
    whole global batch (`sync`)."""
    backbone = base.build_encoder(run.config, bn_group="sync")
    return Classifier(backbone, run.dataset.num_classes)


def load_or_train_classifier(run, directory: Path, split: str, epochs: int, batch_size: int):
    """(variables, description, trained now?) of the classifier cached in `directory`."""
    config = run.config
    description = {
        "dataset": config.dataset.name,
        "image_size": config.dataset.image_size,
        "model": {k: config.model.get(k) for k in ("name", "width", "small_stem")},
        "train_split": split,
        "epochs": epochs,
        "batch_size": batch_size,
    }
    meta, weights = directory / "classifier.json", directory / "classifier.msgpack"
    if meta.exists() and weights.exists():
        cached = json.loads(meta.read_text())
        if cached != description:
            raise UserError(
                f"{directory} holds a classifier for {cached}, not {description}; pass another "
                "--classifier-dir (or matching flags)"
            )
        size = config.dataset.image_size
        template = jax.eval_shape(
            lambda: classifier_model(run).init(
                jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False
            )
        )
        variables = flax.serialization.from_bytes(template, weights.read_bytes())
        return jax.device_put(variables, run.replicated), description, False
    variables = train_classifier(run, split, epochs, batch_size, seed=config.seed)
    if jax.process_index() == 0:
        files.write_bytes(weights, flax.serialization.to_bytes(jax.device_get(variables)))
        files.write_json(meta, description)
    return variables, description, True


def grid_png(
    originals: np.ndarray, reconstructions: np.ndarray, columns: int = 8, gap: int = 2
) -> bytes:
    """PNG of images in [0, 1]: row pairs of `columns` originals over their reconstructions,
    each image enlarged (nearest neighbour) to at least 64 px."""
    n, size = len(originals), originals.shape[1]
    scale = max(1, math.ceil(64 / size))
    cell = size * scale + gap
    rows = math.ceil(n / columns)
    canvas = np.ones((2 * rows * cell + gap, min(n, columns) * cell + gap, 3), np.float32)
    for i in range(n):
        r, c = divmod(i, columns)
        for k, image in enumerate((originals[i], reconstructions[i])):
            big = np.kron(image, np.ones((scale, scale, 1), np.float32))
            y, x = gap + (2 * r + k) * cell, gap + c * cell
            canvas[y : y + size * scale, x : x + size * scale] = big
    pixels = np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8)
    return tf.io.encode_png(pixels).numpy()


def evaluate_split(run, sage_variables, classifier_variables, split, grid_images):
    """Counts of top-1/top-5 hits on originals and reconstructions, the MSE and the grid."""
    method, model = run.method, classifier_model(run)
    k = min(5, run.dataset.num_classes)

    @jax.jit
    def score(sage, classifier, images, labels):
        encoder = {name: sage[name]["encoder"] for name in ("params", "batch_stats")}
        feature_map = method.encoder.apply(encoder, images, train=False)["layer4"]
        reconstruction, _ = method.reconstruct(
            sage["params"], sage["batch_stats"], feature_map, train=False
        )
        mse = jnp.mean(jnp.square(2 * images - 1 - reconstruction), axis=(1, 2, 3))
        shown = (reconstruction + 1) / 2
        hits = []
        for x in (images, shown):
            top = jax.lax.top_k(model.apply(classifier, x, train=False), k)[1]
            hits += [top[:, 0] == labels, jnp.any(top == labels[:, None], axis=1)]
        return (*hits, mse, shown)

    devices = run.mesh.devices.size
    batch_size = max(run.config.eval.batch_size // devices, 1) * devices
    sharding = NamedSharding(run.mesh, SPLIT)
    totals, count = np.zeros(5), 0
    originals, reconstructions = [], []
    for batch in pipeline.eval_batches(run.config, split, batch_size // jax.process_count()):
        local = (batch["image"], batch["label"], np.asarray(batch["mask"], bool))
        images, labels, keep = [jax.make_array_from_process_local_data(sharding, x) for x in local]
        out = multihost_utils.process_allgather(
            (*score(sage_variables, classifier_variables, images, labels), images, keep),
            tiled=True,
        )
        keep = np.asarray(out[-1])
        totals += [np.asarray(x)[keep].astype(np.float64).sum() for x in out[:5]]
        count += int(keep.sum())
        if sum(len(x) for x in originals) < grid_images:
            originals.append(np.asarray(out[-2])[keep])
            reconstructions.append(np.asarray(out[5])[keep])
    grid = (np.concatenate(originals)[:grid_images], np.concatenate(reconstructions)[:grid_images])
    return totals / max(count, 1), count, grid


def run(args: argparse.Namespace) -> dict:
    """The perceptual test of `args.workdir`; writes DIR/eval/perceptual.{json,png}."""
    workdir = Path(args.workdir)
    sage_run, sage_variables, step = load_sage(
        workdir, args.checkpoint, getattr(args, "random_init", False), args.dataset
    )
    if not sage_run.dataset.num_classes:
        raise UserError(f"{sage_run.dataset.name} has no labels: no perceptual test")
    split = args.split or sage_run.dataset.test_split
    classifier_split = args.classifier_split or sage_run.dataset.memory_split
    directory = Path(args.classifier_dir or workdir / "eval" / "perceptual_classifier")
    classifier, description, trained = load_or_train_classifier(
        sage_run, directory, classifier_split, args.classifier_epochs, args.classifier_batch_size
    )
    rates, count, (originals, reconstructions) = evaluate_split(
        sage_run, sage_variables, classifier, split, args.grid_images
    )
    metric = "top1" if sage_run.dataset.num_classes <= 10 else "top5"
    names = ("original_top1", "original_top5", "reconstruction_top1", "reconstruction_top5")
    scores = dict(zip(names, map(float, rates[:4])))
    kind = "random_init" if getattr(args, "random_init", False) else "trained"
    suffix = "" if kind == "trained" else f"_{kind}"
    out = workdir / "eval"
    result = {
        "metric": "perceptual",
        "accuracy": metric,
        "original": scores[f"original_{metric}"],
        "reconstruction": scores[f"reconstruction_{metric}"],
        **scores,
        "reconstruction_mse": float(rates[4]),
        "workdir": str(workdir),
        "dataset": sage_run.config.dataset.name,
        "split": split,
        "num_images": count,
        "features": kind,
        "checkpoint": step,
        "classifier": {**description, "dir": str(directory), "trained_now": trained},
        "grid": str(out / f"perceptual{suffix}.png"),
    }
    if jax.process_index() == 0:
        files.write_bytes(out / f"perceptual{suffix}.png", grid_png(originals, reconstructions))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, originals=originals, reconstructions=reconstructions)
        files.write_bytes(out / f"perceptual{suffix}_grid.npz", buffer.getvalue())
        files.write_json(out / f"perceptual{suffix}.json", result)
    return result
