"""securefrl: privacy-preserving federated reinforcement learning with secure aggregation.

``securefrl.load_run(path).evaluate(client=0)`` loads a finished run's trained models and evaluates
one client's model in its own environment (see :mod:`securefrl.runs`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("securefrl")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "load_run"]


def load_run(path: Any, output_dir: str = "results") -> Any:
    """The run at ``path`` (a run folder, a folder of runs, or a run name) with its trained models."""
    from securefrl.runs import load_run as _load  # deferred: builds torch agents

    return _load(path, output_dir)
