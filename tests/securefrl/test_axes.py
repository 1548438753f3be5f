"""The round's three axes: any client algorithm on any executor that runs its tasks, with the loop's metrics.

Differential tests: every personalization method on the vectorized executor (proximal terms, frozen phases,
embedded networks and a second population included) gives the loop's returns exactly (training statistics
and parameters within float rounding: batched matmuls sum in another order), also under CKKS; the Ray
executors are covered in test_ray_backend.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from securefrl.agents import agent_capabilities
from securefrl.axes import ALGORITHMS, EXECUTORS
from securefrl.config import load_config
from securefrl.errors import ConfigError
from securefrl.federation import Federation, make_federation
from securefrl.vectorized import VectorizedExecutor

TINY = ["federation.n_clients=3", "federation.rounds=2", "federation.local_steps=64", "federation.eval_episodes=1",
        "federation.client_fraction=0.7", "env.heterogeneity=1.0",
        "agent.params={n_envs: 2, n_steps: 16, hidden: [16]}"]
EXECUTOR_OVERRIDES = {"local": [], "vectorized": ["federation.simulation=vectorized"],
                      "ray": ["federation.backend=ray"],
                      "vectorized+ray": ["federation.simulation=vectorized", "federation.backend=ray"]}
METHOD_EXTRA = {"group": ["personalization.groups=[0,1,0]"]}


EXACT_TRAIN = ("episodes", "mean_return", "updates")
"""Training statistics that count episodes and steps: equal on every path (phases prefix them: ``train_head_``)."""


FROM_UPDATES = ("update_norm", "relation_self_weight")
"""Row values computed from the parameter updates, so equal within float rounding only."""


def assert_rows_match(want: list[dict[str, Any]], got: list[dict[str, Any]]) -> None:
    """Client rows of the loop (``want``) and another executor (``got``): returns (global, local, personal), clusters
    and bytes exactly, episode counts exactly (NaN, or null in JSON lines, where no episode ended), losses and norms
    within float rounding."""
    for ra, rb in zip(want, got, strict=True):
        assert ra.keys() == rb.keys()
        for key, va in ra.items():
            exact = key.startswith("train_") and key.endswith(EXACT_TRAIN)
            if key.startswith("train_") and (va is None or np.isnan(va)):  # no episode ended (JSON lines: null)
                assert rb[key] is None or np.isnan(rb[key]), key
            elif key.startswith("train_") and not exact:
                assert rb[key] == pytest.approx(va, rel=1e-4, abs=1e-6, nan_ok=True), key
            elif key in FROM_UPDATES:
                assert rb[key] == pytest.approx(va, rel=1e-4), key
            else:
                assert rb[key] == va, key


def _rounds(fed: Federation, n: int = 2) -> list[Any]:
    return [fed.run_round() for _ in range(n)]


def test_one_rule_decides_every_algorithm_executor_pair() -> None:
    # Arrange: what each side declares.
    caps = agent_capabilities("ppo")
    for method in ALGORITHMS.names():
        needs = set(ALGORITHMS.meta(method).get("task_features", ()))
        for executor, overrides in EXECUTOR_OVERRIDES.items():
            offers = set(EXECUTORS.meta(executor).get("features", ()))
            expected = needs <= offers and set(EXECUTORS.meta(executor).get("agent_needs", ())) <= caps
            # Act
            try:
                load_config(overrides=[*TINY, f"personalization.method={method}", *METHOD_EXTRA.get(method, []),
                                       *overrides])
                accepted = True
            except ConfigError as err:
                accepted = False
                assert err.field in ("federation.simulation", "federation.backend"), err
                assert "loop" in str(err)
            # Assert
            assert accepted == expected, (method, executor)
    # Personalization now runs off the loop where its tasks allow (it was refused for every method).
    assert {"none", "local", "finetune", "fedper", "group", "ifca"} <= {
        m for m in ALGORITHMS.names() if not set(ALGORITHMS.meta(m).get("task_features", ()))}


PERSONALIZATION = [m for m in ALGORITHMS.names() if m != "none" and "selected_by" not in ALGORITHMS.meta(m)]
"""Every personalization method (gradient mode's algorithms are selected by federation.update, not here)."""


@pytest.mark.parametrize("method", PERSONALIZATION)
def test_personalization_on_the_vectorized_executor_matches_the_loop(method: str) -> None:
    over = [*TINY, f"personalization.method={method}", *METHOD_EXTRA.get(method, [])]
    loop = Federation(load_config(overrides=over))
    vec = make_federation(load_config(overrides=[*over, "federation.simulation=vectorized"]))
    assert isinstance(vec.executor, VectorizedExecutor)
    for a, b in zip(_rounds(loop), _rounds(vec), strict=True):
        assert_rows_match(a.clients, b.clients)
    np.testing.assert_allclose(vec.global_params, loop.global_params, rtol=0, atol=1e-5)


def test_ifca_on_the_vectorized_executor_under_ckks_matches_the_loop() -> None:
    over = [*TINY, "personalization.method=ifca", "protocol.name=ckks"]
    loop = Federation(load_config(overrides=over))
    vec = Federation(load_config(overrides=[*over, "federation.simulation=vectorized"]))
    for a, b in zip(_rounds(loop), _rounds(vec), strict=True):
        for key in ("return_global", "return_local", "return_personal", "cluster", "bytes_up"):
            assert [r.get(key) for r in a.clients] == [r.get(key) for r in b.clients], key
    np.testing.assert_allclose(vec.global_params, loop.global_params, rtol=0, atol=1e-5)


def test_federation_and_make_federation_build_the_same_thing() -> None:
    cfg = load_config(overrides=[*TINY, "personalization.method=fedper", "federation.simulation=vectorized"])
    a, b = Federation(cfg), make_federation(cfg)
    assert type(a) is type(b) is Federation and type(a.executor) is type(b.executor) is VectorizedExecutor
    assert type(a.algorithm) is type(b.algorithm) and a.algorithm.method == "fedper"
    assert a.local_mask is a.algorithm.local_mask  # the algorithm's state reads through the facade
