"""Objectives, found by module path: `config.method = NAME` is `ssljax.methods.NAME`, whose
`METHOD` is the Method class. Adding an objective adds one module here (and a config)."""

from __future__ import annotations

import importlib
import pkgutil

from ssljax.errors import UserError


def available_methods() -> list[str]:
    """The names of every module in this package that defines a `METHOD`."""
    names = []
    for module in pkgutil.iter_modules(__path__):
        if getattr(importlib.import_module(f"{__name__}.{module.name}"), "METHOD", None):
            names.append(module.name)
    return sorted(names)


def get_method(name: str):
    """The Method class of `ssljax.methods.<name>`; an unknown name is a UserError."""
    module_name = f"{__name__}.{name}"
    try:
        module = importlib.import_module(module_name) if name.isidentifier() else None
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        module = None
    method = getattr(module, "METHOD", None)
    if method is None:
        raise UserError(f"unknown method {name!r}; choose one of {available_methods()}")
    return method
