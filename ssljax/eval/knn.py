"""Weighted k-NN classification on frozen features (Wu et al. 2018, as used by DINO/solo-learn).

Cosine similarity between L2-normalised features; each of the k nearest memory images
votes for its label with weight exp(s / T). Memory = the labelled train split, queries =
the test split. The memory bank stays sharded over every device (`ssljax.eval.bank`).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from etils.epath import Path

from ssljax.eval import bank, results
from ssljax.eval import features as feats
from ssljax.sharding import DATA_AXIS, REPLICATED, SPLIT


def knn_predict(
    memory: np.ndarray,
    memory_labels: np.ndarray,
    queries: np.ndarray,
    k: int,
    temperature: float,
    num_classes: int,
    chunk: int = 1024,
) -> np.ndarray:
    """The class each query receives from its k nearest memory images (host arrays, one
    device: the reference the sharded computation must equal)."""
    return predict(
        bank.from_numpy(memory, memory_labels),
        bank.from_numpy(queries, np.zeros(len(queries), np.int32)),
        k,
        temperature,
        num_classes,
        chunk,
    )


def predict(
    memory: bank.ShardedFeatures,
    queries: bank.ShardedFeatures,
    k: int,
    temperature: float,
    num_classes: int,
    chunk: int = 1024,
) -> np.ndarray:
    """The class of each query (split order) from its k nearest memory images.

    The memory bank stays sharded: each device scores a chunk of queries against its own
    rows and keeps its k best; the devices' candidates are gathered (k x devices per
    query) and the best k of those vote. Equal to the top-k over the whole bank.
    """
    mesh = memory.mesh
    k = min(k, len(memory))
    local_k = min(k, memory.rows_per_device)
    chunk = max(min(chunk, len(queries)), 1)

    def normalise(x):
        return x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def local(memory_rows, memory_labels, memory_valid, query_rows, layout_rows):
        q = normalise(bank.gather_rows(query_rows, layout_rows))
        sims = jnp.where(memory_valid[None], q @ normalise(memory_rows).T, -jnp.inf)
        sims, idx = jax.lax.top_k(sims, local_k)
        labels = memory_labels[idx]
        sims = jax.lax.all_gather(sims, DATA_AXIS, axis=1, tiled=True)
        labels = jax.lax.all_gather(labels, DATA_AXIS, axis=1, tiled=True)
        sims, best = jax.lax.top_k(sims, k)
        labels = jnp.take_along_axis(labels, best, axis=1)
        votes = jax.nn.one_hot(labels, num_classes) * jnp.exp(sims / temperature)[..., None]
        return jnp.argmax(votes.sum(axis=1), axis=-1)

    step = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(SPLIT,) * 4 + (REPLICATED,),
            out_specs=REPLICATED,
            check_vma=False,
        )
    )
    memory_labels = memory.device_array(memory.labels)
    memory_valid = memory.device_array(memory.valid)
    out = []
    for start in range(0, len(queries), chunk):
        rows = queries.order[start : start + chunk]
        padded = np.pad(rows, (0, chunk - len(rows)))
        pred = step(
            memory.features,
            memory_labels,
            memory_valid,
            queries.features,
            bank.replicate(mesh, padded.astype(np.int32)),
        )
        out.append(bank.local_value(pred)[: len(rows)])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


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
        return bank.cached(run, variables, split, workdir, tag, raw_pixels)

    memory = extract(run.dataset.memory_split)
    queries = extract(run.dataset.test_split)
    labels = queries.ordered_labels()
    ks = tuple(dict.fromkeys((config.eval.knn_k, *(ks or (200,)))))  # top1 is at knn_k
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
        pred = predict(memory, queries, k, config.eval.knn_temperature, run.dataset.num_classes)
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
