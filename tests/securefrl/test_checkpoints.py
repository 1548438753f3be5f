"""Every registered agent checkpoints through the one mechanism of :class:`securefrl.agents.base.Agent`.

An agent declares what it holds (``checkpointed`` parts, ``counters``); ``state_dict`` / ``load_state_dict``
are shared. Each agent here learns a little, checkpoints, and a differently seeded twin loaded from the
checkpoint (through ``torch.save`` / ``torch.load(weights_only=True)``) holds exactly the same state; and no
stateful attribute (network, optimizer, buffer, tensor) is left out of the declaration.
"""

from __future__ import annotations

import io
from typing import Any

import gymnasium as gym
import pytest
import torch

from securefrl.agents import AGENTS, Agent, make_agent
from securefrl.agents.common import Streams
from securefrl.agents.vecenv import EnvPool


def _cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def _pendulum() -> gym.Env:
    return gym.make("Pendulum-v1")


# Per registered agent: env, tiny hyperparameters that reach updates (and target syncs), steps to learn.
TINY: dict[str, tuple[Any, dict[str, Any], int]] = {
    "dqn": (_cartpole, {"hidden": [8], "learning_starts": 16, "train_freq": 8, "gradient_steps": 2, "batch_size": 8,
                        "buffer_size": 64, "exploration_steps": 32, "target_update_interval": 2}, 40),
    "ppo": (_cartpole, {"hidden": [8], "n_envs": 2, "n_steps": 8, "n_epochs": 1, "n_minibatches": 2}, 24),
    "sac": (_pendulum, {"hidden": [8], "learning_starts": 16, "batch_size": 8, "buffer_size": 64}, 24),
}


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _leaves(val, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, val in enumerate(obj) for k, v in _leaves(val, f"{prefix}/{i}").items()}
    return {prefix: obj}


def _assert_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    la, lb = _leaves(a), _leaves(b)
    assert la.keys() == lb.keys()
    for key, va in la.items():
        assert torch.equal(va, lb[key]) if isinstance(va, torch.Tensor) else va == lb[key], key


def _tiny(name: str, seed: int) -> Agent:
    env_fn, params, _ = TINY[name]
    return make_agent(name, env_fn, params, seed=seed)


def test_every_registered_agent_has_a_tiny_setting() -> None:
    assert set(AGENTS.names()) <= set(TINY), "add the new agent to TINY so its checkpoint is round-tripped"


@pytest.mark.parametrize("name", sorted(AGENTS.names()))
def test_checkpoint_round_trip_of_every_registered_agent(name: str) -> None:
    torch.set_num_threads(1)
    a = _tiny(name, seed=3)
    a.learn(TINY[name][2])
    assert a.num_updates > 0  # type: ignore[attr-defined]  # the checkpoint holds trained optimizer state
    state = _roundtrip(a.state_dict())
    b = _tiny(name, seed=11)  # other init, streams and episodes: everything comes from the checkpoint
    assert a.get_flat().tobytes() != b.get_flat().tobytes()
    b.load_state_dict(state)
    _assert_equal(a.state_dict(), b.state_dict())
    a.reseed(5)
    b.reseed(5)
    assert a.learn(8) == pytest.approx(b.learn(8), nan_ok=True)
    assert a.get_flat().tobytes() == b.get_flat().tobytes()


@pytest.mark.parametrize("name", sorted(AGENTS.names()))
def test_every_stateful_attribute_is_declared(name: str) -> None:
    agent = _tiny(name, seed=0)
    implicit = (Streams, EnvPool)  # saved by the base class under "rng" / "envs"
    torch_state = torch.Tensor | torch.nn.Module | torch.optim.Optimizer
    stateful = {k for k, v in vars(agent).items() if isinstance(v, torch_state)
                or (hasattr(v, "state_dict") and not isinstance(v, implicit) and k != "dpsgd")}
    assert stateful <= set(agent.checkpointed), f"{name} holds {sorted(stateful - set(agent.checkpointed))} " \
                                                "that its checkpoint would lose"
    state = agent.state_dict()
    assert {"algo", "config", "counters", "rng", "envs", "dpsgd", *agent.checkpointed} <= state.keys()


def test_a_declared_extra_part_travels_and_a_foreign_checkpoint_is_refused() -> None:
    from securefrl.agents.ppo import PPOAgent

    class WithBaseline(PPOAgent):
        checkpointed = (*PPOAgent.checkpointed, "baseline")

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.baseline = torch.zeros(3)

    env_fn, params, _ = TINY["ppo"]
    cfg = make_agent("ppo", env_fn, params).config
    a, b = WithBaseline(env_fn, cfg, seed=0), WithBaseline(env_fn, cfg, seed=1)
    a.baseline += 2.5
    b.load_state_dict(_roundtrip(a.state_dict()))
    assert torch.equal(b.baseline, torch.full((3,), 2.5))
    plain = _roundtrip(make_agent("ppo", env_fn, params).state_dict())
    with pytest.raises(ValueError, match="baseline"):
        b.load_state_dict(plain)
