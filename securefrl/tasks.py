"""What a client algorithm asks an executor to run: train and evaluation tasks, and their results.

Tasks hold only arrays, numbers, strings and name lists, so an executor can run them in this process,
as one batch, or ship them to another process (Ray) — it never needs to know which algorithm made them.
A task states what its local training needs (``features``); an executor declares which features it runs
(:data:`securefrl.axes.EXECUTORS`) and :mod:`securefrl.compat` checks the pair before a run starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["EvalTask", "TrainResult", "TrainTask"]


@dataclass
class TrainTask:
    """Train one client's agent (``slot``: ``"main"``, or a second agent such as Ditto's ``"personal"``).

    ``params`` is loaded first (None: continue from what the agent holds), then the agent is reseeded with
    ``seed`` (None: not reseeded) and trained for ``steps`` environment steps: with ``mu/2 ||w - ref||^2``
    added when ``proximal = (ref, mu)``, and in ``phases`` of ``(frozen parameter names, steps, stats
    prefix)`` when given (FedRep: head first, body frozen). ``run`` replaces ``learn`` with a custom step
    (``run(agent) -> stats``, in-process executors only: feature ``custom``).
    """

    client_id: int
    round_id: int
    steps: int
    seed: int | None
    params: np.ndarray | None = None
    slot: str = "main"
    proximal: tuple[np.ndarray, float] | None = None
    phases: list[tuple[list[str], int, str]] | None = None
    run: Callable[[Any], dict[str, float]] | None = None

    @property
    def features(self) -> frozenset[str]:
        """What this task asks of the executor (see :data:`securefrl.axes.EXECUTORS`)."""
        out = set()
        if self.proximal is not None:
            out.add("proximal")
        if self.phases is not None:
            out.add("freeze")
        if self.slot != "main":
            out.add("second_agent")
        if self.run is not None:
            out.add("custom")
        return frozenset(out)


@dataclass
class TrainResult:
    """The trained agent's flat parameters and its ``learn`` statistics (``info``: extra reports, e.g. DP-SGD)."""

    client_id: int
    slot: str
    params: np.ndarray
    stats: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalTask:
    """Greedy evaluation of ``params`` (None: what the client's agent holds) in the client's own environment.

    ``seed`` None means the round's evaluation seed for ``tag`` (:func:`securefrl.seeding.eval_seed`),
    ``episodes`` None the configured ``federation.eval_episodes``. The client's agent is left holding
    ``params`` afterwards, in every executor (the next round's state depends on it).
    """

    client_id: int
    round_id: int
    tag: str
    params: np.ndarray | None = None
    episodes: int | None = None
    seed: int | None = None
