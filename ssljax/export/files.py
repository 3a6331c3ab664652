"""The exported files: a PyTorch state_dict (`.pth` or `.safetensors`) and its JSON card.

The card (`FILE` with the suffix `.json`) names the constructor, the input size and the
input normalisation, so that the weights can be used without ssljax:

    card = json.load(open("encoder.json"))
    model = torchvision.models.resnet50()      # card["constructor"], card["kwargs"]
    model.fc = torch.nn.Identity()             # card["identity_head"]
    model.load_state_dict(torch.load("encoder.pth"), strict=True)

`load_torch_model(path)` does exactly that. torch is imported only where a function needs
it (writing `.pth`, loading); `.safetensors` is written with safetensors' numpy API.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ssljax.errors import UserError

SUFFIXES = (".pth", ".pt", ".safetensors")
INSTALL_HINT = "pip install 'ssljax[export]'"


def check_out_path(out: str | os.PathLike) -> Path:
    """`out` if its name says a known format and its folder exists, else a `UserError`."""
    path = Path(out)
    if path.suffix not in SUFFIXES:
        raise UserError(
            f"--out={out}: the file name must end in {', '.join(SUFFIXES)} (it chooses the format)"
        )
    if not path.parent.is_dir():
        raise UserError(f"--out={out}: folder {path.parent} does not exist")
    return path


def card_path(out: str | os.PathLike) -> Path:
    """The JSON beside an exported file: same name, suffix `.json`."""
    return Path(out).with_suffix(".json")


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"exporting needs {module.split('.')[0]} ({e}); {INSTALL_HINT}") from e


def _replace(path: Path, write) -> None:
    """Write through a temporary file beside `path`, so `path` is whole or untouched."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # safetensors creates its file private (0600)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_state_dict(path: Path, state_dict: dict[str, np.ndarray]) -> None:
    """`.safetensors` (safetensors' numpy API) or `.pth`/`.pt` (`torch.save` of tensors)."""
    arrays = {name: np.ascontiguousarray(value) for name, value in state_dict.items()}
    if path.suffix == ".safetensors":
        save_file = _import("safetensors.numpy").save_file
        _replace(path, lambda tmp: save_file(arrays, str(tmp)))
        return
    torch = _import("torch")
    tensors = {name: torch.from_numpy(np.array(value)) for name, value in arrays.items()}
    _replace(path, lambda tmp: torch.save(tensors, tmp))


def write_card(path: Path, card: dict[str, Any]) -> None:
    _replace(path, lambda tmp: tmp.write_text(json.dumps(card, indent=2) + "\n"))


def read_state_dict(path: str | os.PathLike) -> dict:
    """The torch tensors of an exported file (either format)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return _import("safetensors.torch").load_file(str(path))
    return _import("torch").load(path, map_location="cpu", weights_only=True)


def build_torch_model(card: dict[str, Any]):
    """The untrained PyTorch model a card names, its classifier replaced by Identity."""
    torch = _import("torch")
    module_name, _, function = card["constructor"].rpartition(".")
    model = getattr(_import(module_name), function)(*card["args"], **card["kwargs"])
    if card.get("identity_head"):
        setattr(model, card["identity_head"], torch.nn.Identity())
    return model


def load_torch_model(path: str | os.PathLike):
    """The exported encoder as a PyTorch model in eval mode, loaded with `strict=True`:
    `model(x)` maps [B, 3, H, W] images normalised with the card's mean/std to the pooled
    features ssljax computes."""
    card = json.loads(card_path(path).read_text())
    model = build_torch_model(card)
    model.load_state_dict(read_state_dict(path), strict=True)
    return model.eval()
