"""Client-relation personalization (securefrl.personalization.relation): the server math and its refusals."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch

from securefrl.config import load_config
from securefrl.errors import ConfigError
from securefrl.federation import make_federation
from securefrl.personalization import RelationFederation
from securefrl.personalization.relation import (
    cosine_similarity,
    project_to_simplex,
    relation_round,
    relation_weights,
)

SMALL = ["federation.n_clients=3", "federation.rounds=2", "federation.local_steps=64", "federation.eval_episodes=1",
         "env.heterogeneity=1.0", "agent.params.hidden=[16,16]", "agent.params.n_envs=2", "agent.params.n_steps=32",
         "personalization.method=relation"]


def cfg(*extra: str) -> Any:
    return load_config(overrides=[*SMALL, *extra])


# --- the server math ----------------------------------------------------------------------


def test_simplex_projection_is_the_closest_point_of_the_simplex() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 5)) * 2
    p = project_to_simplex(x)
    assert np.all(p >= 0) and np.allclose(p.sum(axis=1), 1.0)
    q = rng.dirichlet(np.ones(5), size=(200,))  # random points of the simplex are never closer
    for i in range(20):
        assert np.linalg.norm(x[i] - p[i]) <= np.min(np.linalg.norm(x[i] - q, axis=1)) + 1e-12
    on = rng.dirichlet(np.ones(5), size=3)
    np.testing.assert_allclose(project_to_simplex(on), on, atol=1e-12)  # points already on it stay
    np.testing.assert_allclose(project_to_simplex(on + 0.7), on, atol=1e-12)  # a constant shift is undone


def test_identical_updates_make_the_round_fedavg() -> None:
    rng = np.random.default_rng(1)
    models = np.tile(rng.normal(size=8), (4, 1))
    update = rng.normal(size=8)
    for alpha in (0.0, 1.0, 50.0):
        out = relation_round(models, np.tile(update, (4, 1)), alpha)
        np.testing.assert_allclose(out.weights, np.full((4, 4), 0.25), atol=1e-12)
        np.testing.assert_allclose(out.models, np.tile(models[0] + update, (4, 1)), atol=1e-12)


def test_alpha_zero_is_fedavg_whatever_the_updates() -> None:
    rng = np.random.default_rng(2)
    models, updates = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    out = relation_round(models, updates, 0.0)
    np.testing.assert_allclose(out.models, np.tile((models + updates).mean(axis=0), (5, 1)), atol=1e-12)
    prior = np.array([0.1, 0.2, 0.3, 0.2, 0.2])
    weighted = relation_round(models, updates, 0.0, prior=prior)
    np.testing.assert_allclose(weighted.models[0], prior @ (models + updates), atol=1e-12)


def test_weights_concentrate_within_clusters_as_alpha_grows() -> None:
    rng = np.random.default_rng(3)
    direction = rng.normal(size=32)
    signs = np.array([1, 1, 1, -1, -1, -1])
    updates = signs[:, None] * direction + 0.3 * rng.normal(size=(6, 32))
    models = np.zeros((6, 32))
    same = signs[:, None] == signs[None, :]
    alphas = (0.0, 0.05, 0.2, 2.0)
    within = [relation_round(models, updates, a).weights[same].reshape(6, 3).sum(axis=1).min() for a in alphas]
    assert within[0] == pytest.approx(0.5)  # FedAvg: half the weight on each cluster
    assert within[0] < within[1] < within[2] <= within[3] and within[3] > 0.99
    out = relation_round(models, updates, 2.0)
    np.testing.assert_allclose(out.weights[~same], 0.0, atol=1e-12)  # nothing from the other cluster
    assert np.all(out.models[:3] @ direction > 0) and np.all(out.models[3:] @ direction < 0)


def test_a_client_is_as_related_to_itself_as_to_its_closest_peer() -> None:
    """The finding: RL update cosines are small (measured 0.03-0.11 within a client type, about 0.02 across, on
    edge caching with 8 clients in 2 types), so with s_ii = 1 the projection put 0.95 of every client's weight on
    itself and relation was local-only training. The peer rule makes the weights follow the peers' differences."""
    from securefrl.config import PersonalizationSection

    alpha = PersonalizationSection().relation_alpha
    types = np.arange(8) % 2
    same = types[:, None] == types[None, :]
    sim = np.where(same, 0.08, 0.02)
    np.fill_diagonal(sim, 1.0)
    w = relation_weights(sim, alpha)
    assert np.diag(w).max() < 0.5  # it was 0.95: nothing learned from anyone
    np.testing.assert_allclose(np.diag(w), w[0, 2])  # self weighs as much as a same-type peer
    assert np.all((w * same).sum(axis=1) > 0.8)  # most of the weight on the client's own type
    noise = 0.05 + np.random.default_rng(5).uniform(-0.005, 0.005, (8, 8))  # no relation: about FedAvg
    noisy = relation_weights((noise + noise.T) / 2 + np.eye(8), alpha)
    assert np.abs(noisy - 1 / 8).max() < 0.05
    assert relation_weights(np.ones((1, 1)), alpha).tolist() == [[1.0]]


def test_relabelling_clients_relabels_the_result() -> None:
    rng = np.random.default_rng(4)
    models, updates = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    perm = rng.permutation(5)
    a, b = relation_round(models, updates, 3.0), relation_round(models[perm], updates[perm], 3.0)
    np.testing.assert_allclose(b.models, a.models[perm], atol=1e-12)
    np.testing.assert_allclose(b.weights, a.weights[np.ix_(perm, perm)], atol=1e-12)


def test_similarity_is_a_moving_average_over_rounds() -> None:
    updates = np.array([[1.0, 0.0], [0.0, 1.0]])
    previous = np.ones((2, 2))
    out = relation_round(np.zeros((2, 2)), updates, 1.0, ema=0.25, previous=previous)
    np.testing.assert_allclose(out.similarity, [[1.0, 0.75], [0.75, 1.0]])
    assert cosine_similarity(np.zeros((2, 3))).tolist() == [[1.0, 1.0], [1.0, 1.0]]  # nothing sent: FedAvg


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"models": np.zeros((2, 3)), "updates": np.zeros((3, 3)), "alpha": 1.0}, r"both be \(n, d\)"),
        ({"models": np.zeros((2, 3)), "updates": np.full((2, 3), np.nan), "alpha": 1.0}, "finite"),
        ({"models": np.zeros((2, 3)), "updates": np.zeros((2, 3)), "alpha": 1.0, "ema": 0.0}, "ema"),
        ({"models": np.zeros((2, 3)), "updates": np.zeros((2, 3)), "alpha": 1.0, "previous": np.ones((3, 3))},
         "previous"),
    ],
)
def test_bad_server_inputs_raise(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        relation_round(**kwargs)


def test_bad_weight_arguments_raise() -> None:
    with pytest.raises(ValueError, match="alpha"):
        relation_weights(np.eye(2), -1.0)
    with pytest.raises(ValueError, match="prior"):
        relation_weights(np.eye(2), 1.0, prior=np.array([0.9, 0.9]))


# --- configuration: refused where the server cannot see individual updates ------------------


@pytest.mark.parametrize("protocol", ["ckks", "secagg"])
def test_relation_is_refused_under_protocols_that_hide_individual_updates(protocol: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg(f"protocol.name={protocol}")
    assert info.value.field == "personalization.method"
    message = str(info.value)
    assert "individual updates" in message and protocol in message
    for alternative in ("finetune", "ditto", "fedper", "ifca", "protocol=plaintext"):
        assert alternative in message


@pytest.mark.parametrize("placement", ["central", "distributed"])
def test_relation_refuses_dp_noise_that_covers_only_the_sum(placement: str) -> None:
    with pytest.raises(ConfigError, match="placement=local") as info:
        cfg(f"privacy.placement={placement}")
    assert info.value.field == "privacy.placement"


def test_relation_accepts_local_dp_and_refuses_robust_rules_and_server_optimizers() -> None:
    cfg("privacy.placement=local")  # each update private by itself: the weighting is post-processing
    with pytest.raises(ConfigError, match="aggregator=fedavg"):
        cfg("federation.aggregator=median")
    with pytest.raises(ConfigError, match="server_optimizer=fedavg"):
        cfg("federation.server_optimizer=fedadam")
    cfg("federation.server_lr=2")  # a plain server step size is allowed


def test_the_server_learning_rate_scales_each_clients_step_toward_its_weighted_average() -> None:
    rng = np.random.default_rng(5)
    models, updates = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    one = relation_round(models, updates, alpha=8.0)
    two = relation_round(models, updates, alpha=8.0, lr=2.0)
    np.testing.assert_array_equal(two.weights, one.weights)  # the step size does not change who is related
    np.testing.assert_allclose(two.models, models + 2.0 * (one.models - models), atol=1e-12)
    same = relation_round(np.tile(models[0], (4, 1)), np.tile(updates[0], (4, 1)), alpha=8.0, lr=2.0)
    np.testing.assert_allclose(same.models, np.tile(models[0] + 2.0 * updates[0], (4, 1)), atol=1e-12)  # FedAvg, lr 2
    with pytest.raises(ValueError, match="lr must be > 0"):
        relation_round(models, updates, alpha=8.0, lr=0.0)


# --- a tiny federation ---------------------------------------------------------------------


def test_tiny_relation_run_keeps_one_model_per_client_and_resumes() -> None:
    torch.set_num_threads(1)
    full, part = make_federation(cfg()), make_federation(cfg())
    assert isinstance(full.algorithm, RelationFederation)
    records = [full.run_round() for _ in range(2)]
    assert not np.allclose(full.models[0], full.models[1])  # personalized: clients hold different models
    for row in records[-1].clients:
        assert 0.0 <= row["relation_self_weight"] <= 1.0 and "return_personal" in row
    assert all(sum(row.values()) == pytest.approx(1.0) for row in full.last_weights.values())
    first = part.run_round()
    buf = io.BytesIO()
    torch.save(part.state_dict(), buf)  # the checkpoint loads with weights_only=True
    buf.seek(0)
    resumed = make_federation(cfg())
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    second = resumed.run_round()
    assert [r.clients for r in records] == [first.clients, second.clients]  # resumes exactly
    np.testing.assert_array_equal(resumed.models, full.models)
    np.testing.assert_array_equal(resumed.similarity, full.similarity)


def test_relation_runs_under_local_dp_and_accounts_the_round(monkeypatch: pytest.MonkeyPatch) -> None:
    from securefrl.privacy import noise

    monkeypatch.setattr(noise, "_seeded_warning_issued", False)  # it warns once per process: not yet in this test
    torch.set_num_threads(1)
    fed = make_federation(cfg("privacy.placement=local", "privacy.noise_multiplier=0.5", "federation.rounds=1",
                              "privacy.seeded_noise_experiment=true"))
    with pytest.warns(UserWarning, match="seeded numpy Generator"):  # experiment noise, not deployment noise
        record = fed.run_round()
    assert record.summary["epsilon"] > 0  # the accountant ran on the locally noised updates
    assert all(sum(row.values()) == pytest.approx(1.0) for row in fed.last_weights.values())
    assert all(np.isfinite(row["return_personal"]) for row in record.clients)
