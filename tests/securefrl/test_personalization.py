"""Personalization: what each method shares and keeps local, IFCA's hidden client-side choice, proximal terms.

Budgets are tiny (a few rollouts per client, small networks) so the file runs in well under a minute and a
half; the learning comparison lives in benchmarks/personalization.py.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch

from protocols import wire
from securefrl.agents import DQNConfig, PPOConfig, make_agent
from securefrl.behaviour import ServerView
from securefrl.config import load_config
from securefrl.envs import EnvSpec
from securefrl.errors import ConfigError
from securefrl.experiment import run_experiment
from securefrl.federation import Federation, make_federation
from securefrl.personalization import (
    Clustered,
    Ditto,
    LocalOnly,
    Partial,
    assign_groups,
    attach_env_embedding,
    decode_slots,
    encode_slots,
    frozen,
    head_parameter_names,
)
from securefrl.personalization.parts import EnvEmbeddingInput
from securefrl.results import read_jsonl

SMALL = ["federation.n_clients=2", "federation.rounds=2", "federation.local_steps=64", "federation.eval_episodes=1",
         "env.heterogeneity=1.0", "agent.params.hidden=[16,16]", "agent.params.n_envs=2", "agent.params.n_steps=32"]


def cfg(*extra: str) -> Any:
    return load_config(overrides=[*SMALL, *extra])


def run(fed: Federation, rounds: int = 2) -> list[Any]:
    return [fed.run_round() for _ in range(rounds)]


def strip_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("time") and k != "round_time"} for r in rows]


@pytest.fixture(autouse=True)
def one_torch_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- configuration ---------------------------------------------------------------------------
def refused(build: Any) -> str:
    """The field named by the ConfigError that ``build()`` raises."""
    with pytest.raises(ConfigError) as err:
        build()
    return err.value.field


def test_default_is_plain_fedavg_and_bad_settings_are_refused():
    assert type(make_federation(cfg())) is Federation
    cases = {
        "personalization.method": ["personalization.method=fedavgx"],
        "personalization.n_clusters": ["personalization.method=ifca", "personalization.n_clusters=1"],
        # every method runs vectorized now, on environments with a batched implementation
        "federation.simulation": ["personalization.method=fedprox", "federation.simulation=vectorized",
                                  "env.name=mountaincar"],
        "privacy.placement": ["personalization.method=ifca", "privacy.placement=local"],
        "federation.aggregator": ["personalization.method=group", "personalization.groups=[0,1]",
                                  "federation.aggregator=median"],
        "personalization.group_by": ["personalization.method=group"],  # neither group_by nor groups
        "personalization.groups": ["personalization.method=group", "personalization.groups=[0,1,1]"],
        "personalization.group_by.mass": ["personalization.method=group", "personalization.group_by=mass"],
        "protocol.params.clip": ["personalization.method=ifca", "protocol.name=secagg", "protocol.params.clip=0.5"],
    }
    for field, overrides in cases.items():
        assert refused(lambda o=overrides: cfg(*o)) == field, overrides
    sac = ["personalization.method=fedprox", "agent.name=sac", "env.name=pendulum", "agent.params={}"]
    assert refused(lambda: cfg(*sac)) == "personalization.method"
    assert refused(lambda: make_federation(cfg("personalization.method=fedper", "personalization.head_layers=3"))) \
        == "personalization.head_layers"


# --- proximal term (FedProx, Ditto) -------------------------------------------------------------
def test_proximal_loss_is_the_squared_distance_to_the_reference():
    agent = make_agent("ppo", lambda: __import__("gymnasium").make("CartPole-v1"), PPOConfig(hidden=(8,)), seed=0)
    w = agent.get_flat()
    ref = w + np.random.default_rng(0).normal(size=w.shape).astype(np.float32)
    assert agent.proximal_loss() is None
    agent.set_proximal(ref, 0.3)
    expected = 0.5 * 0.3 * float(np.sum((w.astype(np.float64) - ref) ** 2))
    assert float(agent.proximal_loss().detach()) == pytest.approx(expected, rel=1e-5)
    agent.set_proximal(None)
    assert agent.proximal_loss() is None
    assert refused(lambda: agent.set_proximal(ref, -1.0)) == "mu"


@pytest.mark.parametrize("name", ["ppo", "dqn"])
def test_proximal_term_pulls_local_training_towards_the_reference(name):
    import gymnasium as gym

    conf = (PPOConfig(hidden=(16,), n_envs=2, n_steps=32) if name == "ppo" else
            DQNConfig(hidden=(16,), learning_starts=0, train_freq=16, gradient_steps=16, batch_size=16,
                      buffer_size=1000))
    distances = {}
    for mu in (0.0, 50.0):
        agent = make_agent(name, lambda: gym.make("CartPole-v1"), conf, seed=3)
        ref = agent.get_flat() + np.random.default_rng(1).normal(0.0, 0.05, agent.get_flat().shape).astype(np.float32)
        start = float(np.linalg.norm(agent.get_flat() - ref))
        agent.set_proximal(ref, mu)
        agent.learn(256)
        distances[mu] = float(np.linalg.norm(agent.get_flat() - ref))
    # without the term training wanders off; with a strong term it moves clearly towards the reference
    assert distances[50.0] < 0.8 * start
    assert distances[50.0] < 0.8 * distances[0.0]


def test_sac_refuses_a_proximal_term():
    import gymnasium as gym

    from securefrl.agents import SACConfig

    agent = make_agent("sac", lambda: gym.make("Pendulum-v1"), SACConfig(hidden=(8,)), seed=0)
    assert refused(lambda: agent.set_proximal(agent.get_flat(), 0.1)) == "personalization.method"


def test_fedprox_sets_the_term_only_during_local_training():
    fed = make_federation(cfg("personalization.method=fedprox", "personalization.fedprox_mu=0.5"))
    seen = []
    agent = fed.clients[0].agent
    learn = agent.learn

    def spy(steps: int) -> dict[str, float]:
        seen.append((agent._proximal[0], agent._proximal[1][0].clone()))
        return learn(steps)

    agent.learn = spy  # type: ignore[method-assign]
    global_before = fed.global_params.copy()
    fed.run_round()
    mu, first_ref = seen[0]
    assert mu == 0.5
    torch.testing.assert_close(first_ref, agent.parameter_spec().unflatten(global_before)[0])
    assert agent._proximal is None


# --- personal heads (FedPer / FedRep) ------------------------------------------------------------
def test_head_names_are_the_last_layers_of_every_network():
    names = ["actor.0.weight", "actor.0.bias", "actor.2.weight", "actor.2.bias", "critic.0.weight", "critic.0.bias",
             "critic.2.weight", "critic.2.bias", "log_alpha"]
    assert head_parameter_names(names, 1) == ["actor.2.weight", "actor.2.bias", "critic.2.weight", "critic.2.bias"]
    assert refused(lambda: head_parameter_names(names, 2)) == "personalization.head_layers"


@pytest.mark.parametrize("method", ["fedper", "fedrep"])
def test_fedper_shares_the_body_and_keeps_heads_local(method):
    fed = make_federation(cfg(f"personalization.method={method}"))
    assert isinstance(fed.algorithm, Partial)
    spec = fed.clients[0].agent.parameter_spec()
    body = int(spec.mask(fed.shared_names).sum())
    assert fed.local_names == [n for n in spec.names if n.split(".")[1] == "4"]  # the output layers
    assert fed.dim == fed.protocol.dim == body < spec.dim
    init = fed.global_params.copy()
    views: list[ServerView] = []
    fed.observers.append(views.append)
    run(fed)
    # only the body travels: a plaintext payload holds a weight and `body` float32 values
    assert all(len(p) == wire.HEADER_SIZE + 8 + 4 * body for v in views for p in v.payloads.values())
    models = [fed.algorithm.client_model(c) for c in fed.clients]
    m = fed.local_mask
    for model in models:  # every client holds exactly the global body
        np.testing.assert_array_equal(model[~m], fed.global_params[~m])
    assert not np.array_equal(models[0][m], models[1][m])  # heads are personal
    assert not np.array_equal(fed.global_params[~m], init[~m])  # the body was aggregated
    np.testing.assert_array_equal(fed.global_params[m], init[m])  # the server never received a head


def test_frozen_tensors_do_not_move_during_training():
    import gymnasium as gym

    agent = make_agent("ppo", lambda: gym.make("CartPole-v1"), PPOConfig(hidden=(8, 8), n_envs=2, n_steps=32), seed=0)
    heads = head_parameter_names(agent.parameter_spec().names, 1)
    body = [n for n in agent.parameter_spec().names if n not in heads]
    head_mask = agent.parameter_spec().mask(heads)
    before = agent.get_flat()
    with frozen(agent, body):
        agent.learn(64)
    after = agent.get_flat()
    np.testing.assert_array_equal(after[~head_mask], before[~head_mask])
    assert not np.array_equal(after[head_mask], before[head_mask])
    assert all(p.requires_grad for _, p in agent.federated_parameters())


def test_fedper_under_ckks_protects_only_the_shared_part():
    fed = make_federation(cfg("personalization.method=fedper", "protocol.name=ckks", "federation.rounds=1"))
    body = int((~fed.local_mask).sum())
    assert fed.protocol.dim == body
    before = fed.global_params.copy()
    views: list[ServerView] = []
    fed.observers.append(views.append)
    fed.run_round()
    assert views[0].individual_updates is None and views[0].revealed_mean is None
    assert not np.array_equal(fed.global_params[~fed.local_mask], before[~fed.local_mask])


# --- environment embedding ----------------------------------------------------------------------
def test_embedding_is_fed_to_the_network_and_stays_local():
    fed = make_federation(cfg("personalization.method=embedding", "personalization.embedding_dim=3"))
    agent = fed.clients[0].agent
    assert isinstance(agent.actor, EnvEmbeddingInput) and isinstance(agent.critic, EnvEmbeddingInput)
    assert fed.local_names == ["actor.embedding", "critic.embedding"]
    assert fed.dim == fed.protocol.dim == agent.parameter_spec().dim - 6
    run(fed)
    embeddings = [fed.local_parts[c.client_id] for c in fed.clients]
    assert all(np.any(e != 0) for e in embeddings) and not np.array_equal(*embeddings)
    m = fed.local_mask
    for c in fed.clients:
        np.testing.assert_array_equal(fed.algorithm.client_model(c)[~m], fed.global_params[~m])
    # the embedding changes what the shared network computes
    obs = torch.zeros(1, 4)
    with torch.no_grad():
        out = agent.actor(obs).clone()
        agent.actor.embedding.add_(1.0)
        assert not torch.allclose(agent.actor(obs), out)


def test_attach_embedding_to_dqn_adds_an_optimised_input_and_a_matching_target():
    import gymnasium as gym

    agent = make_agent("dqn", lambda: gym.make("CartPole-v1"), DQNConfig(hidden=(8,)), seed=0)
    n_groups = len(agent.optimizer.param_groups)
    attach_env_embedding(agent, 2, 1.0, torch.Generator().manual_seed(0))
    assert len(agent.optimizer.param_groups) == n_groups + 1
    assert "q.embedding" in agent.parameter_spec().names
    with torch.no_grad():
        agent.q_net.embedding.fill_(0.5)
    agent.set_flat(agent.get_flat())  # syncs the target, embedding included
    obs = torch.ones(3, 4)
    torch.testing.assert_close(agent.target_net(obs), agent.q_net(obs))


# --- k-slot encoding, grouped aggregation, IFCA -------------------------------------------------
def test_slots_give_each_cluster_its_own_mean():
    rng = np.random.default_rng(0)
    updates = [rng.normal(size=5) for _ in range(4)]
    choice = [2, 0, 2, 2]
    total = sum(encode_slots(u, c, 3) for u, c in zip(updates, choice, strict=True))
    means, shares = decode_slots(total / 4, 3, 5)  # what a protocol's weighted mean (weights 1) returns
    np.testing.assert_allclose(means[0], updates[1])
    np.testing.assert_allclose(means[2], (updates[0] + updates[2] + updates[3]) / 3)
    np.testing.assert_array_equal(means[1], np.zeros(5))  # nobody chose cluster 1
    np.testing.assert_allclose(shares, [0.25, 0.0, 0.75])
    assert len({encode_slots(u, c, 3).shape for u, c in zip(updates, choice, strict=True)}) == 1


def test_groups_bin_a_physics_parameter_or_follow_an_explicit_list():
    c = cfg("federation.n_clients=6", "personalization.method=group", "personalization.group_by=pole_length",
            "personalization.group_bins=2")
    fed = make_federation(c)
    lengths = [cl.env_spec.params["pole_length"] for cl in fed.clients]
    assert fed.choice == [int(v >= 1.0) for v in lengths]  # range [0.5, 1.5] at h=1, split at 1.0
    assert len(set(fed.choice)) == 2
    explicit = cfg("federation.n_clients=3", "personalization.method=group", "personalization.groups=[0,2,0]")
    assert assign_groups(explicit, [cl.env_spec for cl in make_federation(explicit).clients]) == [0, 2, 0]
    flat = cfg("personalization.method=group", "personalization.group_by=gravity", "env.heterogeneity=0.0")
    assert make_federation(flat).choice == [0, 0]


def test_group_models_only_move_with_their_members():
    fed = make_federation(cfg("federation.n_clients=3", "personalization.method=group",
                              "personalization.groups=[0,2,0]", "federation.rounds=1"))
    assert isinstance(fed.algorithm, Clustered) and fed.k == 3
    assert fed.protocol.dim == 3 * (fed.model_dim + 1)
    before = [fed.cluster_model(j).copy() for j in range(3)]
    views: list[ServerView] = []
    fed.observers.append(views.append)
    record = fed.run_round()
    indiv = {c: decode_slots(v, 3, fed.model_dim)[0] for c, v in views[0].individual_updates.items()}
    np.testing.assert_allclose(fed.cluster_model(0) - before[0], (indiv[0][0] + indiv[2][0]) / 2, atol=1e-5)
    np.testing.assert_allclose(fed.cluster_model(2) - before[2], indiv[1][2], atol=1e-5)
    np.testing.assert_array_equal(fed.cluster_model(1), before[1])  # an empty group does not move
    assert record.summary["cluster_shares"] == pytest.approx([2 / 3, 0.0, 1 / 3])
    assert [r["cluster"] for r in record.clients] == [0, 2, 0]


def _balancer(fed: Federation, sign: float) -> np.ndarray:
    """A hand-made actor: push the cart towards where the pole falls (sign=+1) or the opposite way (-1)."""
    agent = fed.clients[0].agent
    with torch.no_grad():
        for p in agent.actor.parameters():
            p.zero_()
        agent.actor[0].weight[0, 2:] = 5.0  # pole angle + angular velocity
        agent.actor[2].weight[0, 0] = 5.0
        agent.actor[4].weight[1, 0] = 5.0 * sign
        agent.actor[4].weight[0, 0] = -5.0 * sign
    return agent.get_flat()


def ifca_fed(*extra: str) -> Federation:
    """Two CartPole clients; client 1's motor is wired backwards (negative force), the extreme of heterogeneity."""
    fed = make_federation(cfg("env.heterogeneity=0.0", "personalization.method=ifca",
                              "personalization.selection_episodes=1", "federation.rounds=1", *extra))
    assert isinstance(fed.algorithm, Clustered)
    fed.clients[1].eval_env = EnvSpec("CartPole-v1", {"force_mag": -10.0}).make()
    return fed


def test_ifca_clients_pick_the_cluster_that_serves_them_best():
    fed = ifca_fed()
    good, flipped = _balancer(fed, +1.0), _balancer(fed, -1.0)
    fed.global_params = np.concatenate([flipped, good])
    j0, scores0 = fed.select_cluster(fed.clients[0], 0)
    j1, scores1 = fed.select_cluster(fed.clients[1], 0)
    assert (j0, j1) == (1, 0)  # the normal cart picks the balancer, the reversed one the flipped balancer
    assert scores0[1] > 5 * scores0[0] and scores1[0] > 5 * scores1[1]
    record = fed.run_round()
    assert [r["cluster"] for r in record.clients] == [1, 0]


def test_ifca_under_ckks_hides_the_choice_and_still_updates_each_cluster():
    results = {}
    for protocol in ("plaintext", "ckks"):
        fed = ifca_fed(f"protocol.name={protocol}")
        fed.global_params = np.concatenate([_balancer(fed, -1.0), _balancer(fed, +1.0)])
        views: list[ServerView] = []
        fed.observers.append(views.append)
        fed.run_round()
        results[protocol] = (fed, views[0])
    plain_fed, plain_view = results["plaintext"]
    ckks_fed, ckks_view = results["ckks"]
    assert plain_fed.choice == ckks_fed.choice == [1, 0]
    # in plaintext the server could read each client's slot counts: the choice is in the payload ...
    counts = {c: decode_slots(v, 2, plain_fed.model_dim)[1] for c, v in plain_view.individual_updates.items()}
    assert counts[0].tolist() == [0.0, 1.0] and counts[1].tolist() == [1.0, 0.0]
    # ... under CKKS the server holds equal-length ciphertexts and nothing it can open
    sizes = {len(p) for p in ckks_view.payloads.values()}
    assert len(sizes) == 1
    assert ckks_view.individual_updates is None and ckks_view.revealed_mean is None
    # the key holder's opening gives the same cluster models as plaintext, up to CKKS precision
    np.testing.assert_allclose(ckks_fed.global_params, plain_fed.global_params, atol=1e-4)


# --- Ditto and local-only ---------------------------------------------------------------------
def test_ditto_personal_models_stay_local_and_differ_from_the_global_model():
    fed = make_federation(cfg("personalization.method=ditto", "personalization.ditto_steps=64"))
    assert isinstance(fed.algorithm, Ditto)
    assert fed.protocol.dim == fed.global_params.shape[0]  # only the global model's delta travels
    records = run(fed)
    for c in fed.clients:
        assert not np.array_equal(fed.personal[c.client_id], fed.global_params)
    assert all("return_personal" in r and "train_personal_env_steps" in r for r in records[-1].clients)
    assert all(r["env_steps"] == 2 * 2 * 64 for r in records[-1].clients)  # global + personal training


def test_ditto_lambda_controls_how_far_personal_models_drift():
    drift = {}
    for lam in (0.001, 100.0):
        fed = make_federation(cfg("personalization.method=ditto", f"personalization.ditto_lambda={lam}",
                                  "federation.rounds=1", "federation.local_steps=128"))
        start = fed.global_params.copy()
        fed.run_round()
        drift[lam] = np.mean([np.linalg.norm(fed.personal[c.client_id] - start) for c in fed.clients])
    assert drift[100.0] < 0.7 * drift[0.001]


def test_local_only_clients_send_nothing_and_train_their_own_models():
    fed = make_federation(cfg("personalization.method=local"))
    assert isinstance(fed.algorithm, LocalOnly)
    init = fed.global_params.copy()
    records = run(fed)
    assert all(r.summary["bytes_up"] == 0 for r in records)
    np.testing.assert_array_equal(fed.global_params, init)
    assert not np.array_equal(fed.own[0], fed.own[1])
    assert [r["return_personal"] for r in records[-1].clients] == [r["return_global"] for r in records[-1].clients]


# --- every method: seeded, deterministic, checkpointable -------------------------------------
def test_finetune_trains_the_same_global_model_as_fedavg_and_deploys_the_fine_tuned_one():
    plain, tuned = make_federation(cfg()), make_federation(cfg("personalization.method=finetune"))
    rec_plain, rec_tuned = run(plain), run(tuned)
    assert plain.global_params.tobytes() == tuned.global_params.tobytes()
    assert [r["return_global"] for r in rec_plain[-1].clients] == [r["return_global"] for r in rec_tuned[-1].clients]
    for c in tuned.clients:  # deployed: the round's received global model after local training, not the new global
        assert not np.array_equal(tuned.personal_model(c), tuned.global_params)


METHODS = [("local", []), ("finetune", []), ("fedprox", []), ("fedper", []), ("fedrep", []), ("embedding", []),
           ("group", ["personalization.groups=[0,1]"]), ("ifca", []), ("ditto", [])]


@pytest.mark.parametrize(("method", "extra"), METHODS, ids=[m for m, _ in METHODS])
def test_tiny_seeded_run_is_deterministic_and_resumes_exactly(method, extra):
    c = cfg(f"personalization.method={method}", *extra)
    a, b = make_federation(c), make_federation(c)
    rec_a, rec_b = run(a), run(b, 1)
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    buf.seek(0)
    resumed = make_federation(c)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    rec_b.append(resumed.run_round())
    assert strip_times([r.summary for r in rec_a]) == strip_times([r.summary for r in rec_b])
    assert [r.clients for r in rec_a] == [r.clients for r in rec_b]
    assert a.global_params.tobytes() == resumed.global_params.tobytes()
    assert all(np.isfinite(r["return_personal"]) for r in rec_a[-1].clients)
    assert rec_a[-1].summary["method"] == method


def test_experiment_runner_writes_personal_returns_and_resumes(tmp_path):
    overrides = ["personalization.method=ifca", f"output_dir={tmp_path}", "federation.rounds=3"]
    full = run_experiment(cfg(*overrides, "name=full"), progress=False)
    part = cfg(*overrides, "name=part")
    run_experiment(part, progress=False, stop_after=1)
    resumed = run_experiment(part, resume=True, progress=False)
    rows = read_jsonl(resumed.path / "clients.jsonl")
    assert len(rows) == 3 * 2 and all("return_personal" in r and r["cluster"] in (0, 1) for r in rows)
    assert resumed.federation.global_params.tobytes() == full.federation.global_params.tobytes()
    assert [r["return_personal"] for r in resumed.clients] == [r["return_personal"] for r in full.clients]
