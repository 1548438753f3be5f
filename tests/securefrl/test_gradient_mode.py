"""Gradient mode (``federation.update = "gradient"``, :mod:`securefrl.gradient`): FedSGD / DD-PPO.

One client with the server's Adam is the single agent, step for step; gradients travel through the real
protocols (CKKS, SecAgg+) like deltas; runs are deterministic and resume bit-identically.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch

from securefrl.agents import make_agent
from securefrl.config import load_config
from securefrl.errors import ConfigError
from securefrl.federation import Federation
from securefrl.seeding import derive_seed, train_seed

PPO = ["agent.params={n_envs: 2, n_steps: 16, hidden: [16], n_epochs: 2, n_minibatches: 2}"]
DQN = ["agent.name=dqn", "agent.params={hidden: [16], learning_starts: 64, train_freq: 16, gradient_steps: 4, "
       "target_update_interval: 6, batch_size: 8, buffer_size: 500}"]
SAC = ["agent.name=sac", "env.name=pendulum", "agent.params={hidden: [16], learning_starts: 64, train_freq: 4, "
       "gradient_steps: 2, batch_size: 16, buffer_size: 1000, actor_on_updated_critic: false}"]
AGENTS = {"ppo": PPO, "dqn": DQN, "sac": SAC}


def _config(*extra: str, n_clients: int = 1, local_steps: int = 64):
    return load_config(overrides=["federation.update=gradient", f"federation.n_clients={n_clients}",
                                  "federation.rounds=3", f"federation.local_steps={local_steps}",
                                  "federation.eval_episodes=1", "env.heterogeneity=0", *extra])


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _rows(fed: Federation, rounds: int) -> list[list[dict]]:
    out = []
    for _ in range(rounds):
        rec = fed.run_round()
        out.append([{k: v for k, v in row.items() if not k.startswith("time")} for row in rec.clients])
    return out


@pytest.mark.parametrize(("agent", "local_steps"), [("ppo", 64), ("dqn", 64), ("sac", 100)])
def test_one_client_with_server_adam_is_the_single_agent_step_for_step(agent: str, local_steps: int) -> None:
    # Arrange: a one-client federation in gradient mode and the same agent trained alone from the same start
    # (SAC: 300 Pendulum steps, 118 updates of actor, critics, temperature and target critics).
    cfg = _config(*AGENTS[agent], local_steps=local_steps)
    fed = Federation(cfg)
    ref = make_agent(agent, fed.clients[0].env_spec.make, cfg.agent_config(), seed=derive_seed(cfg.seed, "agent", 0))
    ref.set_flat(fed.global_params)
    steps = []
    for r in range(3):
        # Act: one federated round (every optimizer step an aggregation) and the same budget of local training.
        steps.append(fed.run_round().summary["grad_steps"])
        ref.reseed(train_seed(cfg.seed, r, 0))
        ref.learn(cfg.federation.local_steps)
        # Assert: the server's parameters are the single agent's (float32 Adam vs float64: float tolerance).
        np.testing.assert_allclose(fed.global_params, ref.get_flat(), rtol=0, atol=1e-6)
    assert sum(steps) == ref.num_updates > 0  # type: ignore[attr-defined]
    if agent == "sac":  # the server's target critics and the client's local temperature are the single agent's
        target = [p for net in (ref.q1_target, ref.q2_target) for p in net.parameters()]  # type: ignore[attr-defined]
        np.testing.assert_allclose(fed.server_opt.state["fedsgd_agent_target"],
                                   np.concatenate([p.detach().numpy().ravel() for p in target]), rtol=0, atol=1e-6)
        assert fed.clients[0].agent.alpha == pytest.approx(ref.alpha, abs=1e-6)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("agent", "local_steps"), [("ppo", 32), ("sac", 72)])
def test_two_clients_average_gradients_and_the_run_is_deterministic(agent: str, local_steps: int) -> None:
    cfg = _config(*AGENTS[agent], n_clients=2, local_steps=local_steps)
    a, b = Federation(cfg), Federation(cfg)
    rows_a, rows_b = _rows(a, 2), _rows(b, 2)
    np.testing.assert_equal(rows_a, rows_b)  # NaN (no episode finished) equals NaN
    np.testing.assert_array_equal(a.global_params, b.global_params)
    assert all(row["update_norm"] > 0 for rnd in rows_a for row in rnd)


@pytest.mark.parametrize("agent", ["ppo", "dqn", "sac"])
def test_resume_is_bit_identical(agent: str) -> None:
    # Arrange: 3 rounds straight, and 2 rounds -> checkpoint -> a fresh federation -> the 3rd round.
    cfg = _config(*AGENTS[agent], n_clients=2)
    straight = Federation(cfg)
    rows = _rows(straight, 3)
    first = Federation(cfg)
    _rows(first, 2)
    resumed = Federation(cfg)
    resumed.load_state_dict(_roundtrip(first.state_dict()))
    # Act / Assert: the resumed third round equals the straight one, bit for bit.
    np.testing.assert_equal(_rows(resumed, 1)[0], rows[2])
    np.testing.assert_array_equal(resumed.global_params, straight.global_params)


@pytest.mark.parametrize("protocol", ["secagg", "ckks"])
@pytest.mark.parametrize("update", ["delta", "gradient"])
def test_both_modes_through_the_secure_protocols(protocol: str, update: str) -> None:
    # Arrange: the plaintext run is the reference; a tiny round of 2 rollouts x 1 minibatch = 2 aggregations.
    over = ["agent.params={n_envs: 2, n_steps: 8, hidden: [8], n_epochs: 1, n_minibatches: 1}",
            f"federation.update={update}"]
    plain = Federation(_config(*over, n_clients=2, local_steps=32))
    secure = Federation(_config(*over, f"protocol.name={protocol}", n_clients=2, local_steps=32))
    # Act
    t0 = time.perf_counter()
    rec_p, rec_s = plain.run_round(), secure.run_round()
    # Assert: every client's update was included, and the secure model equals the plaintext one (CKKS and
    # SecAgg's fixed point round the mean; 1e-4 is far below one step's size).
    assert rec_s.summary["n_included"] == 2 and rec_s.summary["aborted"] is None
    if update == "gradient":
        assert rec_s.summary["grad_steps"] == rec_p.summary["grad_steps"] == 2
        assert rec_s.summary["bytes_up_steps"] > 0
    np.testing.assert_allclose(secure.global_params, plain.global_params, rtol=0, atol=1e-4)
    assert time.perf_counter() - t0 < 60


def _opened_means(fed: Federation) -> list[np.ndarray]:
    """Record every mean gradient the server's Adam steps on (the protocol's opened aggregate)."""
    means: list[np.ndarray] = []
    apply_mean = fed.algorithm.apply_mean

    def spy(mean: np.ndarray) -> np.ndarray:
        means.append(np.array(mean))
        return apply_mean(mean)

    fed.algorithm.apply_mean = spy  # type: ignore[method-assign]
    return means


@pytest.mark.parametrize("protocol", ["secagg", "ckks"])
def test_sac_gradients_through_the_secure_protocols(protocol: str) -> None:
    # Arrange: two SAC clients, 36 steps a round, phases due at steps 16 and 28, one gradient step each. SAC's
    # critic gradients reach ~17 per coordinate, beyond SecAgg's default coordinate clip of 1: widen it.
    over = [*SAC[:2], "agent.params={hidden: [8], learning_starts: 16, train_freq: 12, gradient_steps: 1, "
            "batch_size: 8, buffer_size: 100}"]
    wide = ["protocol.params={clip: 64.0}"] if protocol == "secagg" else []
    plain = Federation(_config(*over, n_clients=2, local_steps=36))
    secure = Federation(_config(*over, f"protocol.name={protocol}", *wide, n_clients=2, local_steps=36))
    means_p, means_s = _opened_means(plain), _opened_means(secure)
    # Act
    rec_p, rec_s = plain.run_round(), secure.run_round()
    # Assert: both clients' gradients in both steps, and the opened mean is the plaintext one. The first is at
    # the same parameters (CKKS / fixed-point rounding only); the second follows one Adam step, which turns
    # the protocol's ~1e-7 noise on exactly-zero gradient coordinates into steps of up to lr, so it is close
    # in scale only.
    assert rec_s.summary["n_included"] == 2 and rec_s.summary["aborted"] is None
    assert rec_s.summary["grad_steps"] == rec_p.summary["grad_steps"] == 2 and rec_s.summary["grad_steps_aborted"] == 0
    assert len(means_s) == len(means_p) == 2 and np.abs(means_p[0]).max() > 1
    np.testing.assert_allclose(means_s[0], means_p[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(means_s[1], means_p[1], rtol=0, atol=1e-2)
    np.testing.assert_allclose(secure.global_params, plain.global_params, rtol=0, atol=2e-3)  # two steps of lr


@pytest.mark.parametrize(("override", "field"), [
    ("agent.params={actor_on_updated_critic: true}", "agent.params.actor_on_updated_critic"),
    ("federation.client_fraction=0.5", "federation.client_fraction"),
])
def test_sac_gradient_mode_refuses_what_it_cannot_run_step_for_step(override: str, field: str) -> None:
    # The default SAC (actor on the updated critics) and a sampled subset of clients (not in lock step).
    with pytest.raises(ConfigError) as info:
        _config(*SAC[:2], override, n_clients=4)
    assert info.value.field == field, info.value


@pytest.mark.parametrize(("override", "field"), [
    ("federation.simulation=vectorized", "federation.simulation"),
    ("personalization.method=fedprox", "federation.update"),
    ("federation.server_optimizer=fedadam", "federation.server_optimizer"),
    ("federation.update=sideways", "federation.update"),
])
def test_what_gradient_mode_does_not_implement_is_refused_naming_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        _config(override)
    assert info.value.field == field, info.value


@pytest.mark.parametrize(("agent", "sampling", "refused"), [
    ("ppo", "shuffle", False), ("dqn", "uniform", False), ("ppo", "poisson", True), ("dqn", "poisson", True)])
def test_only_poisson_batches_are_refused(agent: str, sampling: str, refused: bool) -> None:
    # PPO's default sampling is named "shuffle", DQN's "uniform": naming either explicitly is accepted.
    over = [f"agent.name={agent}", f"agent.params={{batch_sampling: {sampling}}}"]
    if refused:
        with pytest.raises(ConfigError) as info:
            _config(*over)
        assert info.value.field == "agent.params.batch_sampling"
    else:
        assert _config(*over).federation.update == "gradient"


def test_dp_accounts_every_gradient_step_and_reports_the_last() -> None:
    # Arrange: central DP on the mean gradient, a fixed noise multiplier (accounted per aggregation).
    fed = Federation(_config(*PPO, "privacy.placement=central", "privacy.noise_multiplier=1.0",
                             "privacy.clip_norm=1.0", n_clients=2, local_steps=32))
    # Act
    summary = fed.run_round().summary
    # Assert: one accountant step per aggregation, and the round's epsilon is the accountant's after all of them.
    assert summary["grad_steps"] == 4 and fed.dp.accountant.steps == 4
    assert summary["epsilon_server"] == pytest.approx(fed.dp.accountant.epsilon(fed.config.privacy.delta))
