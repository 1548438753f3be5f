"""FedPG-BR (Fan et al. 2021): the Byzantine filter rule and the variance-reduced estimator of gradient mode."""

from __future__ import annotations

import numpy as np
import pytest

from securefrl.aggregators import make_rule
from securefrl.config import load_config
from securefrl.errors import ConfigError
from securefrl.federation import Federation


def test_the_filter_removes_a_large_outlier_gradient_and_keeps_the_honest_ones() -> None:
    # Arrange: 7 honest gradient estimates around g, one Byzantine gradient far away (its norm is only 10x the
    # honest ones', so the generic huge-norm sanitiser does not catch it: the filter must).
    rng = np.random.default_rng(0)
    g = rng.normal(size=50)
    honest = g + 0.1 * rng.normal(size=(7, 50))
    byzantine = -10 * g
    rule = make_rule("fedpg_br", 8, 1)
    # Act
    res = rule(np.vstack([honest, byzantine[None]]))
    # Assert: exactly the honest rows are averaged; the plain mean would be dragged far off.
    assert res.info["selected"] == list(range(7)) and not res.dropped
    np.testing.assert_allclose(res.aggregate, honest.mean(axis=0))
    assert np.linalg.norm(res.aggregate - g) < 0.1 * np.linalg.norm(np.vstack([honest, byzantine]).mean(0) - g)


def test_the_filter_with_the_papers_threshold_and_its_precondition() -> None:
    rng = np.random.default_rng(1)
    honest = 0.01 * rng.normal(size=(4, 10))  # batch means within sigma sqrt(V / B) of each other
    rule = make_rule("fedpg_br", 5, 1, sigma=0.1, batch=16)
    res = rule(np.vstack([honest, np.full((1, 10), 3.0)]))
    assert res.info["selected"] == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="n > 2f"):
        make_rule("fedpg_br", 4, 2)


TINY = ["federation.update=gradient", "federation.estimator=fedpg-br", "federation.n_clients=3",
        "federation.rounds=2", "federation.eval_episodes=1", "federation.fedpg_batch=2", "federation.fedpg_minibatch=1",
        "env.heterogeneity=0", "agent.params={n_envs: 2, hidden: [8]}"]


def _run(*extra: str) -> tuple[list, np.ndarray]:
    fed = Federation(load_config(overrides=[*TINY, *extra]))
    recs = [fed.run_round() for _ in range(2)]
    rows = [[{k: v for k, v in r.items() if not k.startswith("time")} for r in rec.clients] for rec in recs]
    sums = [{k: v for k, v in rec.summary.items() if not k.startswith("time") and k != "round_time"} for rec in recs]
    return [rows, sums], fed.global_params


def test_the_estimator_runs_tiny_and_is_deterministic() -> None:
    a, pa = _run()
    b, pb = _run()
    np.testing.assert_equal(a, b)
    np.testing.assert_array_equal(pa, pb)
    sums = a[1]
    assert all(s["grad_steps"] == s["fedpg_inner_steps"] >= 1 for s in sums)
    assert all(row["env_steps"] > 0 for row in a[0][-1])  # episodes' steps are counted


def test_the_estimator_with_the_filter_under_a_byzantine_client() -> None:
    # Arrange: one of three clients scales its gradients 100x; the server sees every gradient (plaintext).
    cfg = load_config(overrides=[*TINY, "federation.aggregator=fedpg_br", "attack.name=scaling",
                                 "attack.n_malicious=1", "attack.params={factor: 100}"])
    views = []
    fed = Federation(cfg, observers=[views.append])
    bad = fed.malicious_ids[0]
    # Act
    fed.run_round()
    # Assert: in every aggregation (anchor and inner steps) the filter averaged exactly the honest gradients.
    assert len(views) >= 2
    for view in views:
        honest = [u for c, u in view.individual_updates.items() if c != bad]
        assert np.linalg.norm(view.individual_updates[bad]) > 10 * max(np.linalg.norm(u) for u in honest)
        np.testing.assert_allclose(view.revealed_mean, np.mean(honest, axis=0), rtol=1e-9, atol=1e-12)


def test_fedpg_br_needs_a_policy_agent_and_gradient_mode() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[*TINY[:2], "agent.name=dqn"])
    assert info.value.field == "federation.estimator"
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["federation.estimator=fedpg-br"])
    assert info.value.field == "federation.estimator"
