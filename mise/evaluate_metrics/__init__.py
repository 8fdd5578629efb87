"""``evaluate`` metric modules shipped inside MISE (Hub metrics are unreachable offline).

Each sub-folder holds one module script; load it with ``evaluate.load(metric_path("uar"))``.
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent


def metric_path(name: str) -> str:
    """Local path of the shipped ``evaluate`` module ``name`` (a folder holding ``<name>.py``)."""
    path = METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"{path}: no shipped evaluate module named {name!r}")
    return str(path.parent)
