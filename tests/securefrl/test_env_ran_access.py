"""The ran_access family: O-RAN user access control (cell bandwidths on a circle, load-shared rates).

The tests every application family shares (gymnasium's checker at h=0 and h=1, registration, reproducible and
recorded draws, batched == per-env step for step, different best policies at h=1 and the same at h=0) run for
ran_access in ``test_envs_applications.py``; these are the model's own.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import numpy as np
import pytest

from securefrl.envs import draw_client_envs, get_family, policy_returns
from securefrl.envs.batched import RANAccessBatch, batch_for
from securefrl.envs.ran_access import (
    LOAD_MAX,
    RATE_REF_MBPS,
    SINR_RANGE_DB,
    RANAccessEnv,
    cell_bandwidths,
    draw_episode,
    greedy_policy,
)
from securefrl.errors import ConfigError

K = 6  # RANAccessEnv's default number of cells


def site(centre: float = 0.5, contrast: float = 1.0, session: float = 10.0) -> RANAccessEnv:
    env = RANAccessEnv()
    env.capacity_centre, env.capacity_contrast, env.mean_session = centre, contrast, session
    return env


def mean_return(env: RANAccessEnv, act: Callable[[np.ndarray], int], seeds: Iterable[int]) -> float:
    return float(np.mean(policy_returns(env, act, seeds)))


def test_bandwidths_split_the_sites_spectrum_around_its_capacity_centre() -> None:
    b = cell_bandwidths(K, 0.5, 1.0, 4.0)
    assert b.sum() == pytest.approx(4.0)
    assert int(np.argmax(b)) == 3 and int(np.argmin(b)) == 0  # cell k sits at k/6 on the circle
    assert b[2] == pytest.approx(b[4]) and b[1] == pytest.approx(b[5])
    assert b[3] / b[0] == pytest.approx(np.exp(2.0))  # strongest / weakest = exp(2 contrast)
    np.testing.assert_allclose(cell_bandwidths(K, 0.0, 1.3, 4.0), cell_bandwidths(K, 1.0, 1.3, 4.0))  # a circle
    np.testing.assert_allclose(cell_bandwidths(K, 0.3, 0.0, 6.0), np.ones(K))  # no contrast: equal cells
    assert int(np.argmax(cell_bandwidths(K, 0.0, 1.0, 4.0))) == 0


def test_reward_is_the_log_rate_of_the_user_sharing_its_cell() -> None:
    env = site()
    obs, _ = env.reset(seed=3)
    e = env.episode
    assert obs[K:].tolist() == [0.0] * K  # the site starts empty
    np.testing.assert_array_equal(obs[:K], e["sinr_db"][0].astype(np.float32))
    _, r0, *_ = env.step(2)
    assert r0 == e["utility"][0, 2]  # alone in the cell
    load = 1 if e["session"][0] > 1 else 0  # the first user is still there unless its session was 1 arrival
    obs, r1, *_ = env.step(2)
    assert r1 == pytest.approx(e["utility"][1, 2] - np.log10(load + 1))
    # the utility is log10(bandwidth x spectral efficiency / reference) plus the user's fading on that cell
    ideal = np.log10(env.bandwidths() * np.log2(1 + 10 ** (e["sinr_db"] / 10)) / RATE_REF_MBPS)
    assert 0.1 < np.std(e["utility"] - ideal) < 0.5
    with pytest.raises(ValueError, match="invalid action"):
        env.step(K)


def test_users_leave_after_their_geometric_session() -> None:
    env = site(session=6.0)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=5)
    cells = []
    for t in range(env.episode_length - 1):
        cells.append(int(rng.integers(K)))
        obs, *_ = env.step(cells[-1])
        ends = np.arange(t + 1) + env.episode["session"][: t + 1]
        present = [sum(1 for u in range(t + 1) if cells[u] == k and ends[u] > t + 1) for k in range(K)]
        assert obs[K:].tolist() == present, t
    sessions = draw_episode(np.random.default_rng(1), np.ones(K), 6.0, 20_000)["session"]
    assert sessions.min() == 1 and sessions.mean() == pytest.approx(6.0, rel=0.03)


def test_observations_stay_inside_the_space_at_the_range_corners() -> None:
    ranges = get_family("ran_access").ranges()
    names = list(ranges)
    for corner in itertools.product(*(ranges[n] for n in names)):
        params = dict(zip(names, corner, strict=True))
        env = site(params["capacity_centre"], params["capacity_contrast"], params["mean_session"])
        for policy in (lambda o: 0, greedy_policy(env)):  # all users in one cell: the highest loads
            obs, _ = env.reset(seed=1)
            for _ in range(env.episode_length):
                assert env.observation_space.contains(obs), params
                obs, *_ = env.step(policy(obs))
    env = site(session=1000.0)  # far outside the range: loads beyond LOAD_MAX read as LOAD_MAX
    obs, _ = env.reset(seed=0)
    for _ in range(env.episode_length):
        obs, *_ = env.step(0)
        assert env.observation_space.contains(obs)
    assert obs[K] == LOAD_MAX and env.loads[0] > LOAD_MAX
    assert env.episode["sinr_db"].min() >= SINR_RANGE_DB[0] and env.episode["sinr_db"].max() <= SINR_RANGE_DB[1]


def test_knowing_the_capacities_pays_and_the_opposite_sites_rule_misroutes() -> None:
    home, opposite, flat = site(0.5, 1.0), site(0.0, 1.0), site(0.5, 0.0)
    seeds = range(6)
    own = mean_return(home, greedy_policy(home), seeds)
    assert 60.0 < own < 140.0  # returns are O(100) per episode of 100 users
    assert mean_return(home, greedy_policy(flat), seeds) < own - 3.0  # ignoring the bandwidths
    assert mean_return(home, lambda o: int(np.argmax(o[:K])), seeds) < own - 3.0  # strongest signal
    assert mean_return(home, greedy_policy(opposite), seeds) < own - 20.0  # sends users to the weak cell


def test_the_greedy_rule_reads_the_sites_parameters() -> None:
    a, b = site(0.5, 1.5), site(0.0, 1.5)
    obs = np.array([10.0] * K + [0] * K, dtype=np.float32)  # equal SINRs, empty site
    assert greedy_policy(a)(obs) == 3 and greedy_policy(b)(obs) == 0
    busy = obs.copy()
    busy[K + 3] = 20  # a crowded strong cell loses the user to a neighbour
    assert greedy_policy(a)(busy) in (2, 4)


def test_batch_checks_its_copies() -> None:
    with pytest.raises(ConfigError, match="n_cells"):
        RANAccessBatch([RANAccessEnv(n_cells=6), RANAccessEnv(n_cells=4)])
    env = site(session=1.0)
    with pytest.raises(ValueError, match="mean_session"):
        RANAccessBatch([env])
    with pytest.raises(ValueError, match="mean_session"):
        env.reset(seed=0)


def test_batch_continues_across_many_episodes_with_explicit_resets() -> None:
    specs = draw_client_envs("ran_access", 2, 1.0, np.random.default_rng(3))
    envs = [spec.make() for spec in specs]
    batch = batch_for(specs)
    rng = np.random.default_rng(2)
    for episode in range(4):  # explicit reseeding of both between episodes, then autoreset within
        seeds = [40 + episode, 80 + episode]
        np.testing.assert_array_equal(batch.reset(seeds), np.stack([e.reset(seed=s)[0] for e, s in zip(envs, seeds,
                                                                                                       strict=True)]))
        for _ in range(150):
            actions = rng.integers(0, K, 2)
            step = batch.step(actions)
            for i, env in enumerate(envs):
                obs, reward, _, truncated, _ = env.step(int(actions[i]))
                assert step.rewards[i] == np.float32(reward) and batch.last_rewards[i] == reward
                np.testing.assert_array_equal(step.next_obs[i], obs)
                if truncated:
                    env.reset()
