"""Vectorized simulation: batched CartPole == gymnasium, batched PPO == per-client PPO, bounded memory, quiet logs.

Tolerances: environment trajectories and episode statistics must be *exactly* equal; parameters
may differ by float32 rounding only, because a batched matmul sums in another order than
``nn.Linear`` (and Adam/clipping round differently) -- we allow 1e-5 absolute, while training moves
the parameters by more than 1e-2, so a wrong update cannot hide inside the tolerance.
"""

import re

import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from securefrl.agents import PPOConfig, make_agent
from securefrl.config import load_config
from securefrl.envs import draw_client_envs
from securefrl.errors import ConfigError
from securefrl.experiment import run_experiment
from securefrl.federation import Federation, make_federation
from securefrl.vectorized import CartPoleBatch, PPOPopulation, VectorizedExecutor, physics_of

PARAM_ATOL = 1e-5
TINY_PPO = "agent.params={n_envs: 2, n_steps: 24, n_epochs: 2, n_minibatches: 3}"


def adam_clocks(agent) -> list[int]:
    """torch.optim.Adam's step count of each of the agent's parameters, in parameter order."""
    state = agent.optimizer.state_dict()["state"]  # keyed by parameter index, inserted in the order stepped first
    return [int(state[i]["step"].item()) for i in sorted(state)]


def _balance(obs: np.ndarray) -> np.ndarray:
    """A linear controller that keeps most poles up for the whole 500 steps (exercises truncation)."""
    return (obs[:, 2] + 0.5 * obs[:, 3] + 0.05 * obs[:, 1] > 0).astype(np.int64)


def test_cartpole_batch_equals_gymnasium_step_for_step():
    # Arrange: 5 clients at the widest heterogeneity, 2 copies each, vs gymnasium's own envs.
    specs = draw_client_envs("cartpole", 5, 1.0, np.random.default_rng(3))
    batch = CartPoleBatch.from_specs(specs, copies=2)
    ref = SyncVectorEnv([s.make for s in specs for _ in range(2)], autoreset_mode=AutoresetMode.SAME_STEP)
    seeds = [11 * i + 5 for i in range(10)]
    rng = np.random.default_rng(0)
    # Act / assert: exact equality of observations, flags, final observations, every step.
    obs_ref, _ = ref.reset(seed=seeds)
    assert np.array_equal(batch.reset(seeds), obs_ref)
    n_term = n_trunc = 0
    for t in range(1500):
        actions = _balance(batch.obs) if t < 1200 else rng.integers(0, 2, 10)
        step = batch.step(actions)
        obs_ref, rew_ref, term_ref, trunc_ref, info = ref.step(actions)
        assert np.array_equal(batch.obs, obs_ref), t
        assert np.array_equal(step.rewards, rew_ref.astype(np.float32))
        assert np.array_equal(step.terminated, term_ref) and np.array_equal(step.truncated, trunc_ref), t
        done = term_ref | trunc_ref
        if done.any():
            final = np.stack([info["final_obs"][i] for i in np.flatnonzero(done)])
            assert np.array_equal(step.next_obs[done], final), t
        n_term, n_trunc = n_term + int(term_ref.sum()), n_trunc + int(trunc_ref.sum())
    assert n_term > 10 and n_trunc >= 2  # both ways of ending were exercised
    # Physics really differ per client: the same seed and actions diverge between clients.
    same = CartPoleBatch.from_specs(specs[:2], copies=1)
    same.reset([7, 7])
    for _ in range(20):
        same.step(np.array([1, 1]))
    assert not np.array_equal(same.state[0], same.state[1])


def test_population_matches_per_client_ppo_agents():
    # Arrange: 3 clients, per-client PPOAgents vs one population, same initial parameters and seeds.
    torch.set_num_threads(1)
    cfg = PPOConfig(n_envs=2, n_steps=32, n_epochs=2, n_minibatches=2)
    specs = draw_client_envs("cartpole", 3, 1.0, np.random.default_rng(0))
    agents = [make_agent("ppo", s.make, cfg, seed=10 + i) for i, s in enumerate(specs)]
    init = make_agent("ppo", specs[0].make, cfg, seed=99).get_flat()
    pop = PPOPopulation(cfg, agents[0].parameter_spec(), 3, physics_of(specs))
    pop.env_seeds = [10 + i for i in range(3)]  # the agents' seeds: their environments start from the same reset
    pop.set_rows(range(3), init)
    for a in agents:
        a.set_flat(init)
    # Act: two rounds; in the second only clients 0 and 2 train (their Adam clocks and LR schedules diverge).
    for ids, seeds in (([0, 1, 2], [5, 6, 7]), ([0, 2], [8, 9])):
        expected = []
        for cid, seed in zip(ids, seeds, strict=True):
            agents[cid].reseed(seed)
            expected.append(agents[cid].learn(150))  # 150 = 2 full rollouts of 64 + a short one of 22 (rounded up)
        before = pop.get_rows(range(3))
        got = pop.learn(ids, 150, seeds)
        obs, actions = pop.last_rollout
        t = len(obs)
        # Assert: identical trajectories (episodes, returns, the last rollout's observations and actions).
        for k, cid in enumerate(ids):
            assert np.array_equal(obs[:, k], agents[cid]._obs[:t]) and np.array_equal(actions[:, k],
                                                                                   agents[cid]._actions[:t])
            for key in ("episodes", "mean_return", "mean_length", "env_steps", "total_env_steps", "updates", "lr"):
                assert got[k][key] == expected[k][key] or (np.isnan(got[k][key]) and np.isnan(expected[k][key])), key
            for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "explained_variance"):
                assert got[k][key] == pytest.approx(expected[k][key], rel=1e-4, abs=1e-6), key
        rows = pop.get_rows(range(3))
        want = np.stack([a.get_flat() for a in agents])
        np.testing.assert_allclose(rows, want, rtol=0, atol=PARAM_ATOL)
        assert np.abs(want - init).max() > 1e-2
    assert np.array_equal(rows[1], before[1])  # a client that did not train is untouched
    # Adam's step count per client and tensor, as torch.optim.Adam keeps it per parameter.
    steps = [adam_clocks(a) for a in agents]
    assert pop.adam_steps.tolist() == steps


TINY_FED = ["federation.n_clients=4", "federation.rounds=2", "federation.local_steps=96",
            "federation.eval_episodes=2", "federation.client_fraction=0.5", "env.heterogeneity=1.0", TINY_PPO]


@pytest.mark.parametrize("protocol", ["plaintext", "secagg"])
def test_vectorized_federation_matches_loop(protocol):
    # Arrange
    loop = Federation(load_config(overrides=[*TINY_FED, f"protocol.name={protocol}"]))
    vec = make_federation(load_config(overrides=[*TINY_FED, f"protocol.name={protocol}",
                                                 "federation.simulation=vectorized"]))
    assert isinstance(vec.executor, VectorizedExecutor)
    for _ in range(2):
        # Act
        a, b = loop.run_round(), vec.run_round()
        # Assert: the same rows (returns exactly; training statistics and norms within float rounding).
        for ra, rb in zip(a.clients, b.clients, strict=True):
            assert ra.keys() == rb.keys()
            for key, va in ra.items():
                if key.startswith("train_") and key not in ("train_episodes", "train_mean_return", "train_updates"):
                    assert rb[key] == pytest.approx(va, rel=1e-4, abs=1e-6), key
                elif key == "update_norm":
                    assert rb[key] == pytest.approx(va, rel=1e-4), key
                else:
                    assert rb[key] == va, key
        np.testing.assert_allclose(vec.global_params, loop.global_params, rtol=0, atol=PARAM_ATOL)
        assert a.summary["n_sampled"] == b.summary["n_sampled"] == 2
    assert np.abs(vec.global_params - Federation(load_config(overrides=TINY_FED)).global_params).max() > 1e-3


def test_vectorized_refuses_what_it_does_not_implement():
    for extra, field in ((["agent.name=dqn"], "federation.simulation"),
                         (["env.name=mountaincar"], "federation.simulation")):
        with pytest.raises(ConfigError) as err:
            load_config(overrides=["federation.simulation=vectorized", *extra])
        assert err.value.field == field
        assert "loop" in str(err.value) or "local" in str(err.value)


def test_population_memory_is_linear_in_clients_and_bounded():
    # Arrange: the stacked state is parameters + two Adam moments per client, float32.
    cfg = PPOConfig()
    env_fn = draw_client_envs("cartpole", 1, 0.0, np.random.default_rng(0))[0].make
    spec = make_agent("ppo", env_fn, cfg).parameter_spec()
    # bytes: 3 float32 vectors + counters (Adam's step count per tensor) + each env copy's state (4 float64 + 3
    # counters); about 110 KB for 64-64 nets
    per_client_bound = 3 * spec.dim * 4 + 64 + 8 * len(spec.names) + cfg.n_envs * 56
    # Act
    sizes = {n: PPOPopulation(cfg, spec, n).nbytes() for n in (10, 100, 1000)}
    # Assert: exactly linear, under the stated per-client bound (1000 clients: about 105 MiB).
    assert sizes[100] - sizes[10] == 90 * (sizes[10] // 10) and sizes[1000] == 100 * sizes[10]
    assert sizes[1000] / 1000 <= per_client_bound
    # And a round of 200 clients (20 sampled) allocates no per-client memory beyond that state.
    fed = make_federation(load_config(overrides=[
        "federation.n_clients=200", "federation.client_fraction=0.1", "federation.local_steps=48",
        "federation.eval_episodes=1", "federation.rounds=1", "federation.simulation=vectorized", TINY_PPO]))
    before = fed.population.nbytes()
    fed.run_round()
    assert fed.population.nbytes() == before == 200 * (before // 200)


def test_run_experiment_logs_one_line_per_round_with_1000_clients(tmp_path, capfd):
    # Arrange: 1,000 clients, 1% sampled, tiny budgets.
    cfg = load_config(overrides=[
        "federation.n_clients=1000", "federation.client_fraction=0.01", "federation.rounds=2",
        "federation.local_steps=32", "federation.eval_episodes=1", "federation.simulation=vectorized",
        TINY_PPO, f"output_dir={tmp_path}", "name=big"])
    # Act
    result = run_experiment(cfg, progress=True)
    err = capfd.readouterr().out  # progress and the table go to stdout
    # Assert: banner + table header + one row per round + the closing line; nothing per client.
    lines = [ln for ln in re.split(r"[\r\n]+", err) if ln.strip() and "rounds:" not in ln]  # drop tqdm's bar
    rows = [ln for ln in lines if re.match(r"^\s+\d+\s+[-\d.]+\s", ln)]
    assert len(rows) == 2, err
    assert len(lines) == 5, lines
    assert len(result.clients) == 2000 and result.rounds[-1]["n_sampled"] == 10


def test_vectorized_run_resumes_to_the_same_result(tmp_path):
    # Arrange: per-client Adam moments, step counts and LR clocks live in the checkpoint.
    over = [*TINY_FED, "federation.rounds=3", "federation.simulation=vectorized", f"output_dir={tmp_path}"]
    full = run_experiment(load_config(overrides=[*over, "name=full"]), progress=False)
    # Act
    run_experiment(load_config(overrides=[*over, "name=cut"]), progress=False, stop_after=1)
    resumed = run_experiment(load_config(overrides=[*over, "name=cut"]), progress=False, resume=True)
    # Assert
    assert [r["return_global"] for r in resumed.clients] == [r["return_global"] for r in full.clients]
    assert np.array_equal(resumed.federation.global_params, full.federation.global_params)
    pop_a, pop_b = resumed.federation.population, full.federation.population
    assert np.array_equal(pop_a.exp_avg_sq.numpy(), pop_b.exp_avg_sq.numpy())
    assert np.array_equal(pop_a.adam_steps, pop_b.adam_steps) and pop_a.adam_steps.max() > 0


@pytest.mark.parametrize("method", ["fedrep", "ditto", "embedding"])
def test_vectorized_personalization_resumes_to_the_same_result(tmp_path, method):
    # Arrange: per-tensor Adam step counts (FedRep's frozen phases), the second population (Ditto's personal agents)
    # and the embedded layout are all in the checkpoint.
    over = [*TINY_FED, "federation.rounds=3", "federation.simulation=vectorized", f"personalization.method={method}",
            "personalization.fedrep_head_fraction=0.25", f"output_dir={tmp_path}"]  # FedRep: head 24 steps, body 72
    full = run_experiment(load_config(overrides=[*over, "name=full"]), progress=False)
    # Act
    run_experiment(load_config(overrides=[*over, "name=cut"]), progress=False, stop_after=1)
    resumed = run_experiment(load_config(overrides=[*over, "name=cut"]), progress=False, resume=True)
    # Assert
    for key in ("return_global", "return_personal"):
        assert [r[key] for r in resumed.clients] == [r[key] for r in full.clients], key
    for slot, pop in full.federation.populations.items():
        other = resumed.federation.populations[slot]
        assert np.array_equal(other.flat.numpy(), pop.flat.numpy()) and np.array_equal(other.adam_steps, pop.adam_steps)
    if method == "fedrep":  # the head's and the body's Adam clocks differ, as torch.optim.Adam's per parameter
        assert len(set(full.federation.population.adam_steps.max(axis=0).tolist())) > 1


def test_population_proximal_and_frozen_phases_match_per_client_agents():
    # Arrange: 2 clients; FedRep-like phases (head with the body frozen, then the body with the head frozen) and a
    # proximal term per client (client 1's coefficient 0: no term), against PPOAgents under frozen()/set_proximal.
    from securefrl.agents.base import frozen
    from securefrl.personalization.parts import head_parameter_names

    torch.set_num_threads(1)
    cfg = PPOConfig(n_envs=2, n_steps=16, n_epochs=2, n_minibatches=2, hidden=[16])
    specs = draw_client_envs("cartpole", 2, 1.0, np.random.default_rng(1))
    agents = [make_agent("ppo", s.make, cfg, seed=20 + i) for i, s in enumerate(specs)]
    names = list(agents[0].parameter_spec().names)
    head = head_parameter_names(names, 1)
    body = [n for n in names if n not in head]
    init = make_agent("ppo", specs[0].make, cfg, seed=7).get_flat()
    ref = init + np.random.default_rng(0).normal(0, 0.1, init.shape).astype(np.float32)
    mus = [0.5, 0.0]
    pop = PPOPopulation(cfg, agents[0].parameter_spec(), 2, physics_of(specs))
    pop.env_seeds = [20, 21]
    pop.set_rows(range(2), init)
    phases = [(body, 32, "head_"), (head, 64, "")]
    expected = []
    for a, mu, seed in zip(agents, mus, (3, 4), strict=True):
        a.set_flat(init)
        a.reseed(seed)
        a.set_proximal(ref, mu)
        stats = {}
        for frozen_names, steps, prefix in phases:
            with frozen(a, frozen_names):
                stats.update({prefix + k: v for k, v in a.learn(steps).items()})
        expected.append(stats)
    # Act
    got = pop.learn([0, 1], 96, [3, 4], (ref, np.array(mus)), phases)
    # Assert: the same statistics and parameters (float rounding), per-tensor Adam clocks exactly.
    for g, e in zip(got, expected, strict=True):
        assert g.keys() == e.keys()
        for key in ("head_episodes", "episodes", "head_updates", "updates", "env_steps"):
            assert g[key] == e[key], key
        for key in ("head_policy_loss", "policy_loss", "value_loss"):
            assert g[key] == pytest.approx(e[key], rel=1e-4, abs=1e-6), key
    want = np.stack([a.get_flat() for a in agents])
    np.testing.assert_allclose(pop.get_rows(range(2)), want, rtol=0, atol=PARAM_ATOL)
    steps = [adam_clocks(a) for a in agents]
    assert pop.adam_steps.tolist() == steps and len(set(steps[0])) == 2  # head and body clocks differ
    # The proximal pull is real: without it client 0 ends elsewhere.
    plain = PPOPopulation(cfg, agents[0].parameter_spec(), 2, physics_of(specs))
    plain.env_seeds = [20, 21]
    plain.set_rows(range(2), init)
    plain.learn([0, 1], 96, [3, 4], None, phases)
    assert np.abs(plain.get_rows([0]) - want[0]).max() > 1e-3
    assert np.abs(plain.get_rows([1]) - want[1]).max() <= PARAM_ATOL
