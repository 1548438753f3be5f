"""federation.round_batch: a round gathers about one batch over all sampled clients, whatever their number."""

import pytest

from securefrl.config import load_config
from securefrl.errors import ConfigError
from securefrl.federation import Federation

PPO = "agent.params={n_envs: 2, n_steps: 16, n_epochs: 1, hidden: [8]}"


@pytest.mark.parametrize(("n_clients", "fraction", "expected"), [(1, 1.0, 32), (4, 1.0, 8), (8, 0.5, 8), (5, 1.0, 8),
                                                                 (64, 1.0, 2)])
def test_round_batch_splits_the_batch_over_sampled_clients(n_clients: int, fraction: float, expected: int) -> None:
    # 32 steps per round over ceil(fraction * n) clients, rounded up to whole vector steps (2 envs).
    cfg = load_config(overrides=[f"federation.n_clients={n_clients}", f"federation.client_fraction={fraction}",
                                 "federation.round_batch=32", PPO])
    assert cfg.federation.local_steps == expected
    assert load_config(base=cfg.to_dict()).federation.local_steps == expected  # the resolved config reloads the same


def test_round_batch_drives_local_training() -> None:
    cfg = load_config(overrides=["federation.n_clients=4", "federation.rounds=1", "federation.round_batch=32",
                                 "federation.eval_episodes=1", PPO])
    rec = Federation(cfg).run_round()
    assert [r["train_env_steps"] for r in rec.clients] == [8.0] * 4
    assert all(r["train_updates"] == 1.0 for r in rec.clients)  # one short rollout, one epoch of one minibatch
    assert rec.summary["env_steps_per_client"] == 8


def test_round_batch_refuses_negative() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["federation.round_batch=-1"])
    assert err.value.field == "federation.round_batch"
