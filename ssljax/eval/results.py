"""Where evaluation results go: `DIR/eval/NAME.json`, one file per evaluation.

NAME = the protocol (`knn`, `linear`, `linear_byol`, `semi_1pct`, ...), then `_<dataset>`
when evaluating on another dataset than the run's, `_random_init` or `_raw_pixels` for the
baselines, `_online` or `_target` when `--network` is not the one the method's paper
evaluates (`Method.evaluated_network`), and `_step_N` when `--checkpoint=N` is not the
newest checkpoint. So `knn.json` always describes the newest checkpoint of the paper's
network and `knn_step_*.json` older ones.
"""

from __future__ import annotations

import jax
from etils.epath import Path

from ssljax import files
from ssljax.eval import features as feats
from ssljax.run import load_config


def features_kind(random_init: bool, raw_pixels: bool = False) -> str:
    return "raw_pixels" if raw_pixels else ("random_init" if random_init else "trained")


def cache_tag(
    workdir: str | Path, checkpoint: int | None, random_init: bool, network: str = "online"
) -> str:
    """The feature-cache tag of an encoder: `random_init` or `step_N`, then `_target` for
    the target network."""
    tag = "random_init" if random_init else f"step_{feats.checkpoint_step(workdir, checkpoint)}"
    return tag if network == "online" else f"{tag}_{network}"


def network_suffix(method, network: str) -> str:
    """'' for the network the method's paper evaluates, else the network's name."""
    return "" if network == method.evaluated_network else network


def result_name(
    workdir: str | Path,
    protocol: str,
    dataset: str | None,
    kind: str,
    checkpoint: int | None,
    network_suffix: str = "",
) -> str:
    name = protocol
    if dataset and dataset != load_config(workdir).dataset.name:
        name += f"_{dataset}"
    if network_suffix:
        name += f"_{network_suffix}"
    if kind != "trained":
        name += f"_{kind}"
    elif checkpoint is not None and checkpoint != feats.checkpoint_step(workdir):
        name += f"_step_{checkpoint}"
    return name


def write_result(workdir: str | Path, name: str, result: dict) -> Path:
    """Write `result` to `DIR/eval/NAME.json` (process 0 only); returns the path."""
    out = Path(workdir) / "eval" / f"{name}.json"
    if jax.process_index() == 0:
        files.write_json(out, result)
    return out
