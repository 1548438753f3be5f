"""Tests of the application families (edge caching, MEC offloading, RAN access) and their batched implementations.

RAN-access-specific tests are in ``test_env_ran_access.py``; the tests here run for every application family."""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from securefrl.envs import EnvSpec, draw_client_envs, family_names, get_family, policy_returns
from securefrl.envs.batched import EdgeCachingBatch, MECOffloadingBatch, batch_for
from securefrl.envs.edge_caching import EdgeCachingEnv, item_ranking, popularity
from securefrl.envs.mec_offloading import MECOffloadingEnv
from securefrl.errors import ConfigError
from securefrl.seeding import derive_rng

APPS = family_names("application")


# --- gymnasium API, registration, records ---------------------------------------------------


@pytest.mark.parametrize("name", APPS)
@pytest.mark.parametrize("h", [0.0, 1.0])
def test_env_checker_passes_without_warnings(name: str, h: float) -> None:
    for spec in draw_client_envs(name, 3, h, np.random.default_rng(4)):
        env = spec.make()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped, skip_render_check=True)
        env.close()
        assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("name", APPS)
def test_family_is_registered_with_a_batched_implementation(name: str) -> None:
    family = get_family(name)
    assert family.kind == "application" and family.env_id in gym.registry
    module, cls = family.batched.split(":")
    batch_cls = getattr(importlib.import_module(module), cls)
    assert batch_cls.env_class is family.env_class
    assert isinstance(gym.make(family.env_id).unwrapped, family.env_class)
    assert "range at h=1" in family.describe()


@pytest.mark.parametrize("name", APPS)
def test_draws_reproducible_recorded_and_rebuilt_from_the_record(name: str) -> None:
    specs = draw_client_envs(name, 4, 1.0, np.random.default_rng(7))
    again = draw_client_envs(name, 4, 1.0, np.random.default_rng(7))
    assert specs == again
    assert len({json.dumps(s.params, sort_keys=True) for s in specs}) == 4  # clients differ at h=1
    record = json.loads(json.dumps([s.to_dict() for s in specs]))  # what environments.json holds
    for spec, row in zip(specs, record, strict=True):
        rebuilt = EnvSpec.from_dict(row)
        a, b = spec.make(), rebuilt.make()
        for p in get_family(name).params:
            assert getattr(b.unwrapped, p.attribute) == spec.params[p.name]
        rng = np.random.default_rng(0)
        actions = rng.integers(0, a.action_space.n, 50)
        obs_a, obs_b = a.reset(seed=3)[0], b.reset(seed=3)[0]
        for act in actions:
            np.testing.assert_array_equal(obs_a, obs_b)
            obs_a, obs_b = a.step(int(act))[0], b.step(int(act))[0]


def test_popularity_is_a_zipf_law_over_the_station_ranking() -> None:
    probs = popularity(12, 0.5, 1.0)
    assert probs.sum() == pytest.approx(1.0)
    ranking = item_ranking(12, 0.5)
    assert ranking[:2].tolist() == [5, 6]  # the items around the centre; ties ordered by index
    assert probs[ranking[0]] / probs[ranking[3]] == pytest.approx(4.0)  # rank 1 vs rank 4, exponent 1
    assert item_ranking(12, 0.0).tolist() == item_ranking(12, 1.0).tolist()  # a circle
    assert set(item_ranking(12, 0.0)[:3]) == {0, 11, 1}


def test_caching_step_semantics() -> None:
    env = EdgeCachingEnv()
    obs, _ = env.reset(seed=0)
    onehot = obs.reshape(env.cache_size + 1, env.n_items)
    cache, request = onehot[:-1].argmax(1), int(onehot[-1].argmax())
    assert onehot.sum() == env.cache_size + 1 and len(set(cache.tolist())) == env.cache_size
    hit = request in cache
    obs, reward, terminated, truncated, info = env.step(1)
    assert reward == float(hit) and info["hit"] == hit and not terminated and not truncated
    if not hit:  # a miss with action 1 stores the request in slot 0
        assert obs.reshape(env.cache_size + 1, env.n_items)[0].argmax() == request
    with pytest.raises(ValueError, match="invalid action"):
        env.step(env.cache_size + 1)


def test_offloading_costs_follow_the_system_model() -> None:
    env = MECOffloadingEnv()
    obs, _ = env.reset(seed=1)
    size, fading, b_loc, b_tx = (float(x) for x in obs)
    assert b_loc == 0.0 and b_tx == 0.0
    cycles = size * 1e6 * env.cycles_per_bit
    local = cycles / 1e9 + env.energy_weight * env.chip_coeff * 1e18 * cycles  # 1 GHz device, no backlog
    _, reward, *_ = env.step(0)
    assert -reward == pytest.approx(local, rel=1e-6)
    env.reset(seed=1)
    tx = size * 1e6 / (1e6 * np.log2(1 + env.snr_ref * fading))
    _, reward, *_ = env.step(1)
    assert -reward == pytest.approx(tx + cycles / 4e9 + env.energy_weight * env.tx_power_w * tx, rel=1e-6)


# --- batched == per-env, step for step --------------------------------------------------------


@pytest.mark.parametrize("name", APPS)
def test_batch_equals_per_env_step_for_step(name: str) -> None:
    specs = draw_client_envs(name, 3, 1.0, np.random.default_rng(11))
    copies, steps = 2, 230  # > 2 episodes of 100 steps: covers autoreset
    batch = batch_for(specs, copies)
    envs = [spec.make() for spec in specs for _ in range(copies)]
    seeds = list(range(100, 100 + len(envs)))
    obs = batch.reset(seeds)
    ref_obs = np.stack([e.reset(seed=s)[0] for e, s in zip(envs, seeds, strict=True)])
    np.testing.assert_array_equal(obs, ref_obs)
    rng = np.random.default_rng(5)
    returns = [[] for _ in envs]
    running = np.zeros(len(envs))
    for _ in range(steps):
        actions = rng.integers(0, batch.action_space.n, len(envs))
        step = batch.step(actions)
        for i, env in enumerate(envs):
            o, r, term, trunc, _ = env.step(int(actions[i]))
            np.testing.assert_array_equal(step.next_obs[i], o)
            assert step.rewards[i] == np.float32(r) and step.terminated[i] == term and step.truncated[i] == trunc
            running[i] += r
            if term or trunc:
                returns[i].append(running[i])
                running[i] = 0.0
                o, _ = env.reset()  # autoreset continues the env's own generator
            np.testing.assert_array_equal(batch.obs[i], o)
    finished = [[ret for ret, _ in batch.drain([i])] for i in range(len(envs))]
    for got, want in zip(finished, returns, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)
        assert len(got) == 2


def test_batch_refuses_mixed_or_unbatched_envs() -> None:
    with pytest.raises(ConfigError, match="EdgeCachingEnv only"):
        EdgeCachingBatch([EdgeCachingEnv(), MECOffloadingEnv()])
    with pytest.raises(ConfigError, match="episode_length"):
        MECOffloadingBatch([MECOffloadingEnv(episode_length=10), MECOffloadingEnv(episode_length=20)])
    with pytest.raises(ConfigError, match="no batched implementation"):
        batch_for([EnvSpec("MountainCar-v0")])
    batch = batch_for(draw_client_envs("edge_caching", 1, 0.0, np.random.default_rng(0)))
    batch.reset([0])
    with pytest.raises(ValueError, match="actions must lie"):
        batch.step(np.array([9]))


# --- heterogeneity that matters: the best policy of one client is bad for another ------------


def _cross_returns(name: str, h: float, n: int = 5) -> np.ndarray:
    """M[a, b]: mean return of client a's hand-written best policy on client b (common random numbers)."""
    specs = draw_client_envs(name, n, h, np.random.default_rng(2))
    envs = [s.make().unwrapped for s in specs]
    for e in envs:
        e.reset(seed=0)  # the popularity law is computed at reset
    reference = get_family(name).reference
    assert reference is not None, f"{name} registers no reference policy"
    policies = [reference(e) for e in envs]
    seeds = range(6)
    return np.array([[policy_returns(envs[b], policies[a], seeds).mean() for b in range(n)] for a in range(n)])


@pytest.mark.parametrize("name", APPS)
def test_at_h0_every_client_has_the_same_best_policy(name: str) -> None:
    m = _cross_returns(name, 0.0, n=3)
    assert np.all(m == m[0, 0])


@pytest.mark.parametrize("name", APPS)
def test_at_h1_one_clients_best_policy_is_clearly_worse_for_another(name: str) -> None:
    m = _cross_returns(name, 1.0)
    own = np.diag(m)
    # cost of using another client's policy, relative to the return scale of the own policy
    loss = (own[None, :] - m) / np.abs(own)[None, :]
    assert loss.max() > 0.3, f"{name}: best foreign policy loses at most {loss.max():.2f}"
    # no single client's policy serves every client as well as their own: the mean over clients drops
    best_single = m.mean(axis=1).max()
    assert best_single < own.mean() - 0.05 * np.abs(own.mean()), (best_single, own.mean())


def test_experiment_records_each_clients_parameters_in_environments_json(tmp_path: Path) -> None:
    name = "mec_offloading"  # the family with the most parameters; both families share the recording code
    from securefrl.config import load_config
    from securefrl.experiment import run_experiment

    cfg = load_config(overrides=[
        f"env.name={name}", "env.heterogeneity=1.0", "federation.n_clients=2", "federation.rounds=1",
        "federation.local_steps=64", "federation.eval_episodes=1", "agent.params.hidden=[8]",
        "agent.params.n_envs=2", "agent.params.n_steps=32",
    ])
    result = run_experiment(cfg, progress=False, out=tmp_path / "apps")
    recorded = json.loads((result.path / "environments.json").read_text())
    drawn = draw_client_envs(name, 2, 1.0, derive_rng(cfg.seed, "env-draw"))
    assert [EnvSpec.from_dict({k: v for k, v in row.items() if k != "client"}) for row in recorded] == drawn
