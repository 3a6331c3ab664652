"""The registry of objectives: `config.method` names one of `METHODS`."""

from __future__ import annotations

from ssljax.errors import UserError


def _byol():
    from ssljax.methods.byol import Byol

    return Byol


METHODS = {"byol": _byol}


def get_method(name: str):
    """The Method class registered as `name`."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]()
