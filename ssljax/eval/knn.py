"""Weighted k-NN classification on frozen features (Wu et al. 2018, as used by DINO/solo-learn).

Cosine similarity between L2-normalised features; each of the k nearest memory images
votes for its label with weight exp(s / T). Memory = the labelled train split, queries =
the test split.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from etils.epath import Path

from ssljax.eval import features as feats
from ssljax.eval import results


def knn_predict(
    memory: np.ndarray,
    memory_labels: np.ndarray,
    queries: np.ndarray,
    k: int,
    temperature: float,
    num_classes: int,
    chunk: int = 1024,
) -> np.ndarray:
    """The class each query receives from its k nearest memory images."""
    memory = jnp.asarray(memory, jnp.float32)
    memory = memory / jnp.maximum(jnp.linalg.norm(memory, axis=1, keepdims=True), 1e-12)
    memory_labels = jnp.asarray(memory_labels)
    k = min(k, memory.shape[0])

    @jax.jit
    def predict(q):
        q = q / jnp.maximum(jnp.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        sims, idx = jax.lax.top_k(q @ memory.T, k)
        votes = (
            jax.nn.one_hot(memory_labels[idx], num_classes) * jnp.exp(sims / temperature)[..., None]
        )
        return jnp.argmax(votes.sum(axis=1), axis=-1)

    out = []
    for start in range(0, len(queries), chunk):
        q = jnp.asarray(queries[start : start + chunk], jnp.float32)
        out.append(np.asarray(predict(q)))
    return np.concatenate(out)


def evaluate(
    workdir: str | Path,
    checkpoint: int | None = None,
    random_init: bool = False,
    raw_pixels: bool = False,
    dataset: str | None = None,
    ks: tuple[int, ...] | None = None,
    network: str | None = None,
) -> dict:
    """k-NN top-1 of a run's encoder (`random_init`: of its untrained network; `raw_pixels`:
    of the flattened evaluation images; `network`: 'online' or 'target', default the one
    the method's paper evaluates). Writes `DIR/eval/knn*.json` (see `results`)."""
    run, variables = feats.load_encoder(
        workdir, checkpoint, random_init or raw_pixels, dataset, network
    )
    config = run.config
    network = run.method.network(network)
    kind = results.features_kind(random_init, raw_pixels)
    tag = None if raw_pixels else results.cache_tag(workdir, checkpoint, random_init, network)

    def extract(split):
        return feats.cached_features(run, variables, split, workdir, tag, raw_pixels)

    memory, memory_labels = extract(run.dataset.memory_split)
    queries, labels = extract(run.dataset.test_split)
    ks = ks or (config.eval.knn_k, 200)
    result = {
        "metric": "knn",
        "workdir": str(workdir),
        "dataset": config.dataset.name,
        "features": kind,
        "network": network,
        "k": config.eval.knn_k,
        "temperature": config.eval.knn_temperature,
        "num_memory": int(len(memory)),
        "num_queries": int(len(queries)),
    }
    for k in ks:
        pred = knn_predict(
            memory, memory_labels, queries, k, config.eval.knn_temperature, run.dataset.num_classes
        )
        result[f"top1_k{k}"] = float(np.mean(pred == labels))
    result["top1"] = result[f"top1_k{config.eval.knn_k}"]
    if kind == "trained":
        result["checkpoint"] = feats.checkpoint_step(workdir, checkpoint)
    suffix = "" if raw_pixels else results.network_suffix(run.method, network)
    name = results.result_name(workdir, "knn", dataset, kind, checkpoint, suffix)
    results.write_result(workdir, name, result)
    return result


def report_against_random_init(workdir: str | Path) -> None:
    """Print the trained network's k-NN top-1 next to the random-init baseline's."""
    trained = evaluate(workdir)
    baseline = evaluate(workdir, random_init=True)
    k = trained["k"]
    print(json.dumps({"knn_top1": trained["top1"], "random_init_knn_top1": baseline["top1"]}))
    print(
        f"{k}-NN top-1 on {trained['dataset']}: trained {100 * trained['top1']:.2f}% vs "
        f"random init {100 * baseline['top1']:.2f}% "
        f"({100 * (trained['top1'] - baseline['top1']):+.2f} points)",
        flush=True,
    )
