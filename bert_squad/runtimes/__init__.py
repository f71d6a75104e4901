"""Inference engines behind the servable's model stage, one module each, and the registry that names them.

The `runtime` field of metadata.json is a key of RUNTIMES; everything else (the servable, the serve command, the
exporter, metadata.json's checks, the option lists) asks get_runtime() instead of naming a runtime. A module meets
the contract of bert_squad/runtimes/base.py (Runtime); adding a runtime is one module and one line here.
"""
from __future__ import annotations

from types import ModuleType
from typing import Dict, Tuple

from bert_squad.runtimes import lite_direct, openvino, serving

RUNTIMES: Dict[str, ModuleType] = {module.NAME: module for module in (serving, lite_direct, openvino)}
NAMES: Tuple[str, ...] = tuple(RUNTIMES)
# Every precision some runtime runs (bert-squad-export --precision), and those the CPU-only runtimes run.
PRECISIONS: Tuple[str, ...] = tuple(dict.fromkeys(p for module in RUNTIMES.values() for p in module.PRECISIONS))
CPU_PRECISIONS: Tuple[str, ...] = tuple(dict.fromkeys(p for module in RUNTIMES.values() if module.CPU_ONLY
                                                      for p in module.PRECISIONS))


def get_runtime(name: str) -> ModuleType:
    """The module of the runtime `name` (a metadata.json `runtime` or --runtime)."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ValueError(f"runtime must be one of {tuple(RUNTIMES)}, got {name!r}") from None


def default_runtime(precision: str) -> str:
    """The runtime bert-squad-export writes for `precision` when --runtime is left out."""
    for name, module in RUNTIMES.items():
        if precision in module.DEFAULT_FOR:
            return name
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def export_runtime(device: str) -> str:
    """The runtime of an fp32 export for `device` (the serve command's export on first start): the fp32 default on
    CPU, elsewhere the first runtime that is not CPU-only."""
    if device == "cpu":
        return default_runtime("fp32")
    return next(name for name, module in RUNTIMES.items() if not module.CPU_ONLY)
