"""The registry of objectives: `config.method` names one of `METHODS`."""

from __future__ import annotations

from ssljax.errors import UserError


def _byol():
    from ssljax.methods.byol import Byol

    return Byol


def _simclr():
    from ssljax.methods.simclr import SimCLR

    return SimCLR


def _moco():
    from ssljax.methods.moco import MoCo

    return MoCo


def _m2_teacher():
    from ssljax.methods.m2_teacher import MomentumSquaredTeacher

    return MomentumSquaredTeacher


def _detcon_s():
    from ssljax.methods.detcon import DetConS

    return DetConS


def _detcon_b():
    from ssljax.methods.detcon import DetConB

    return DetConB


def _sage():
    from ssljax.methods.sage import SaGe

    return SaGe


def _dino():
    from ssljax.methods.dino import Dino

    return Dino


def _swav():
    from ssljax.methods.swav import SwAV

    return SwAV


def _mocov2_star():
    from ssljax.methods.mocov2_star import MoCoV2Star

    return MoCoV2Star


METHODS = {
    "byol": _byol,
    "m2_teacher": _m2_teacher,
    "simclr": _simclr,
    "moco": _moco,
    "detcon_s": _detcon_s,
    "detcon_b": _detcon_b,
    "dino": _dino,
    "sage": _sage,
    "swav": _swav,
    "mocov2_star": _mocov2_star,
}


def get_method(name: str):
    """The Method class registered as `name`."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]()
