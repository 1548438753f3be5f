"""Record-level DP-SGD inside DQN and PPO (securefrl.agents.dp): equivalence, clipping, noise, accounting, sampling."""

from __future__ import annotations

import io
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.grad_sample import GradSampleModule

from securefrl.agents import DQNAgent, DQNConfig, PPOAgent, PPOConfig, SACAgent, SACConfig
from securefrl.agents.base import Agent
from securefrl.agents.dp import (
    DPSGDSettings,
    enable_dp_sgd,
    poisson_indices,
    poisson_replay_batch,
    replay_rate,
)
from securefrl.agents.replay import ReplayBuffer
from securefrl.config import load_config
from securefrl.errors import ConfigError
from securefrl.experiment import run_experiment
from securefrl.privacy.dpsgd import DPSGD_MODES, LinearCapture, mlp_linear_layers, mlp_per_sample_gradients

pytestmark = [
    pytest.mark.filterwarnings("ignore::securefrl.privacy.SeededNoiseWarning"),
    # Opacus's hooks fire on module outputs when the inputs do not require grad; harmless here.
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
]
torch.set_num_threads(1)

INF = float("inf")
# Tiny schedules: DQN trains at env steps 100, 150, 200, ... (8 steps each); PPO rollouts of 2 x 16 rows.
DQN_KW = {"hidden": (32, 32), "learning_starts": 100, "train_freq": 50, "gradient_steps": 8, "batch_size": 32,
          "batch_sampling": "poisson"}
PPO_KW = {"hidden": (16, 16), "n_envs": 2, "n_steps": 16, "n_epochs": 2, "n_minibatches": 2, "gae_lambda": 0.0,
          "norm_adv": False, "batch_sampling": "poisson"}


def env_fn() -> gym.Env:
    return gym.make("CartPole-v1")


def make(algo: str, mode: str | None = None, z: float = 0.0, clip: float = INF, seed: int = 1,
         noise_seed: int = 0, **kw: object) -> Agent:
    if algo == "dqn":
        agent: Agent = DQNAgent(env_fn, DQNConfig(**{**DQN_KW, **kw}), seed=seed)  # type: ignore[arg-type]
    else:
        agent = PPOAgent(env_fn, PPOConfig(**{**PPO_KW, **kw}), seed=seed)  # type: ignore[arg-type]
    if mode is not None:
        # Seeded noise and sample (secure=False): the tests compare runs bit for bit.
        enable_dp_sgd(agent, DPSGDSettings(z, clip, mode, secure=False), np.random.default_rng(noise_seed))
    return agent


STEPS = {"dqn": 300, "ppo": 64}


def dqn_batch(agent: DQNAgent, seed: int = 7) -> dict[str, torch.Tensor]:
    return poisson_replay_batch(agent.replay, agent.config.batch_size, np.random.default_rng(seed), secure=False)


def ppo_batch(agent: PPOAgent, n: int = 24, seed: int = 7) -> dict[str, torch.Tensor]:
    """A minibatch shaped like PPO's rollout rows, with varied advantages and returns."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, agent.obs_dim, generator=g)
    with torch.no_grad():
        logp = torch.log_softmax(agent.actor(obs), dim=-1)
        values = agent.critic(obs).squeeze(1)
    actions = torch.randint(0, agent.n_actions, (n,), generator=g)
    return {"obs": obs, "actions": actions, "logprobs": logp.gather(1, actions.view(-1, 1)).squeeze(1) - 0.05,
            "advantages": torch.randn(n, generator=g), "returns": values + torch.randn(n, generator=g),
            "values": values}


def batch_and_loss(agent: Agent, algo: str) -> tuple[dict[str, torch.Tensor], object]:
    if algo == "dqn":
        assert isinstance(agent, DQNAgent)
        batch = dqn_batch(agent)
        return batch, lambda b: agent.compute_loss(b)
    assert isinstance(agent, PPOAgent)
    return ppo_batch(agent), lambda b: agent.compute_loss(b)[0]


def private_params(agent: Agent) -> list[torch.nn.Parameter]:
    return [p for m in agent.dp_networks().values() for p in m.parameters()]


def slow_per_sample_grads(agent: Agent, loss_of: object, batch: dict[str, torch.Tensor]) -> list[list[torch.Tensor]]:
    """Per-sample gradients the obvious way: one plain autograd pass per record."""
    out = []
    for i in range(len(batch["obs"])):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        params = private_params(agent)
        grads = torch.autograd.grad(loss_of(one), params, allow_unused=True)  # type: ignore[operator]
        out.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)])
    return out


# --- equivalence ---------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["dqn", "ppo"])
@pytest.mark.parametrize("mode", DPSGD_MODES)
def test_zero_noise_and_infinite_clip_equal_plain_training(algo: str, mode: str) -> None:
    # PPO's global norm clip (0.5) would rescale every step and hide a wrong gradient scale: off here.
    kw = {"max_grad_norm": 0.0} if algo == "ppo" else {}
    plain, private = make(algo, **kw), make(algo, mode, z=0.0, clip=INF, **kw)
    start = plain.get_flat().copy()
    plain.learn(STEPS[algo])
    private.learn(STEPS[algo])
    assert np.abs(plain.get_flat() - start).max() > 1e-3  # it trained
    np.testing.assert_allclose(private.get_flat(), plain.get_flat(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algo", ["dqn", "ppo"])
@pytest.mark.parametrize("mode", ["hooks", "ew", "functorch"])
def test_mlp_mode_trains_exactly_like_opacus_with_clipping_active(algo: str, mode: str) -> None:
    kw = {"max_grad_norm": 0.0} if algo == "ppo" else {}
    ours, opacus = make(algo, "mlp", z=0.0, clip=0.05, **kw), make(algo, mode, z=0.0, clip=0.05, **kw)
    ours.learn(STEPS[algo])
    opacus.learn(STEPS[algo])
    unclipped = make(algo, "mlp", z=0.0, clip=INF, **kw)
    unclipped.learn(STEPS[algo])
    assert np.abs(ours.get_flat() - unclipped.get_flat()).max() > 1e-3  # clipping changed training
    np.testing.assert_allclose(ours.get_flat(), opacus.get_flat(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("algo", ["dqn", "ppo"])
def test_mlp_per_sample_gradients_match_opacus(algo: str) -> None:
    agent = make(algo)
    agent.learn(STEPS[algo] // 2)
    batch, loss_of = batch_and_loss(agent, algo)
    n = len(batch["obs"])
    layers = mlp_linear_layers(agent.dp_networks().values())
    with LinearCapture(layers) as capture:
        loss = loss_of(batch)  # type: ignore[operator]
    ours = mlp_per_sample_gradients(capture, loss, n)
    originals = dict(agent.dp_networks())
    gsms = {name: GradSampleModule(net) for name, net in originals.items()}
    for name, gsm in gsms.items():
        setattr(agent, name, gsm)
    loss_of(batch).backward()  # type: ignore[operator]
    for name, net in originals.items():
        setattr(agent, name, net)
    checked = 0
    for p in private_params(agent):
        torch.testing.assert_close(ours[p], p.grad_sample, rtol=1e-4, atol=1e-6)
        assert p.grad_sample.shape == (n, *p.shape)
        checked += 1
    assert checked == len(ours) == len(private_params(agent))
    for gsm in gsms.values():
        gsm._close()


# --- clipping and noise ----------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["dqn", "ppo"])
@pytest.mark.parametrize("mode", DPSGD_MODES)
def test_dp_gradient_is_the_mean_of_per_sample_clipped_gradients(algo: str, mode: str) -> None:
    clip = 0.05
    agent = make(algo, mode, z=0.0, clip=clip)
    agent.learn(STEPS[algo] // 2)
    batch, loss_of = batch_and_loss(agent, algo)
    n = len(batch["obs"])
    per_sample = slow_per_sample_grads(agent, loss_of, batch)
    norms = [float(torch.sqrt(sum((g**2).sum() for g in gs))) for gs in per_sample]
    assert sum(nrm > clip for nrm in norms) >= n // 2  # the test exercises clipping
    clipped = [[g * min(1.0, clip / (nrm + 1e-6)) for g in gs] for gs, nrm in zip(per_sample, norms, strict=True)]
    for gs in clipped:  # the bound each record's contribution obeys
        assert float(torch.sqrt(sum((g**2).sum() for g in gs))) <= clip * (1 + 1e-5)
    expected_batch = 1.5 * n  # any expected size: the sum is divided by it, not by n
    agent.dpsgd.backward(lambda: loss_of(batch), n, expected_batch, 0.1)  # type: ignore[operator]
    for j, p in enumerate(private_params(agent)):
        want = sum(gs[j] for gs in clipped) / expected_batch
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-7)


def test_noise_has_std_z_clip_over_expected_batch_and_is_seeded() -> None:
    # Same batch, z = 0 vs z = 1.3: the gradients differ by pure noise of std z * C / E[B] per coordinate.
    # DQN's 128x128 Q-net has 17,410 coordinates: the std estimate's relative error is ~0.5%; tolerance 5%.
    z, clip, expected = 1.3, 0.7, 40.0
    grads = {}
    for name, noise, seed in (("clean", 0.0, 0), ("noisy", z, 3), ("again", z, 3), ("other", z, 4)):
        agent = make("dqn", "mlp", z=noise, clip=clip, noise_seed=seed, hidden=(128, 128))
        agent.learn(150)
        batch = dqn_batch(agent)
        agent.dpsgd.backward(lambda a=agent, b=batch: a.compute_loss(b), len(batch["obs"]), expected, 0.1)
        grads[name] = torch.cat([p.grad.flatten() for p in private_params(agent)])
    diff = grads["noisy"] - grads["clean"]
    assert diff.numel() == 17_410
    assert float(diff.std()) == pytest.approx(z * clip / expected, rel=0.05)
    assert abs(float(diff.mean())) < 5 * z * clip / expected / math.sqrt(diff.numel())
    assert torch.equal(grads["noisy"], grads["again"])  # seeded: reproducible
    assert not torch.equal(grads["noisy"], grads["other"])


@pytest.mark.parametrize("mode", DPSGD_MODES)
def test_an_empty_poisson_batch_releases_noise_alone(mode: str) -> None:
    # PPO's two 64x64 networks hold 9,155 coordinates: std estimate within ~0.7%; tolerance 5%.
    z, clip, expected = 1.0, 0.5, 8.0
    agent = make("ppo", mode, z=z, clip=clip, hidden=(64, 64))
    steps_before = agent.dpsgd.steps
    loss = agent.dpsgd.backward(lambda: pytest.fail("no records, no loss"), 0, expected, 0.5)
    assert loss is None and agent.dpsgd.steps == steps_before + 1  # the step still counts
    noise = torch.cat([p.grad.flatten() for p in private_params(agent)])
    assert noise.numel() == 9_155
    assert float(noise.std()) == pytest.approx(z * clip / expected, rel=0.05)


@pytest.mark.parametrize("algo", ["dqn", "ppo"])
def test_nonzero_noise_changes_training(algo: str) -> None:
    clean, noisy = make(algo, "mlp", z=0.0, clip=1.0), make(algo, "mlp", z=1.0, clip=1.0)
    clean.learn(STEPS[algo])
    noisy.learn(STEPS[algo])
    assert np.abs(noisy.get_flat() - clean.get_flat()).max() > 1e-3


# --- accounting ------------------------------------------------------------------------------
@pytest.mark.parametrize(("accountant", "rel"), [("rdp", 1e-9), ("prv", 1e-6)])
def test_dqn_record_epsilon_composes_over_every_step_and_matches_opacus(accountant: str, rel: float) -> None:
    z, delta = 1.1, 1e-5
    agent = make("dqn")
    enable_dp_sgd(agent, DPSGDSettings(z, 1.0, "mlp", accountant=accountant), np.random.default_rng(0))
    agent.learn(300)
    eps_300 = agent.dpsgd.epsilon()
    agent.learn(100)
    eps_400 = agent.dpsgd.epsilon()
    assert 0 < eps_300 < eps_400 < math.inf
    # Independently: phases at env steps 100, 150, ..., 400, 8 steps each, q = batch 32 / stored transitions.
    history = [(z, 32 / t, 8) for t in range(100, 401, 50)]
    assert list(agent.dpsgd.history) == history
    assert agent.dpsgd.steps == 8 * len(history)
    ref = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    for zz, q, n in history:
        for _ in range(n):
            ref.step(noise_multiplier=zz, sample_rate=q)
    assert eps_400 == pytest.approx(ref.get_epsilon(delta), rel=rel)


def test_ppo_record_epsilon_is_per_rollout_and_matches_opacus() -> None:
    z, delta = 1.1, 1e-5
    eps = {}
    for epochs in (2, 4):
        agent = make("ppo", "mlp", z=z, clip=1.0, n_epochs=epochs)
        agent.learn(32)  # one rollout of 2 x 16 rows
        eps[epochs] = agent.dpsgd.epsilon()
        steps = epochs * 2  # n_epochs * n_minibatches, each at q = 1 / n_minibatches
        assert agent.dpsgd.history == ((z, 0.5, steps),)
        ref = RDPAccountant()
        for _ in range(steps):
            ref.step(noise_multiplier=z, sample_rate=0.5)
        assert eps[epochs] == pytest.approx(ref.get_epsilon(delta), rel=1e-9)
        agent.learn(96)  # three more rollouts: fresh datasets, so a transition's epsilon stays the same
        assert agent.dpsgd.epsilon() == pytest.approx(eps[epochs], rel=1e-12)
        assert agent.dpsgd.steps == 4 * steps
    assert 0 < eps[2] < eps[4]


def test_no_noise_means_no_finite_epsilon() -> None:
    agent = make("dqn", "mlp", z=0.0, clip=1.0)
    assert agent.dpsgd.epsilon() == 0.0
    agent.learn(150)
    assert agent.dpsgd.epsilon() == math.inf


# --- Poisson sampling ------------------------------------------------------------------------
def test_poisson_replay_sampling_rate_matches_q() -> None:
    # 1000 stored transitions, expected batch 64 -> q = 0.064. 4000 seeded draws: the mean batch size has
    # std sqrt(n q (1-q) / 4000) = 0.12 (tolerance 5 std); each record's inclusion count is Binomial(4000, q)
    # with std 15.5 (tolerance 5 std, for all 1000 records); the batch-size variance n q (1-q) = 59.9 (10%).
    n, b, draws = 1000, 64, 4000
    replay = ReplayBuffer(2000, 1, (), np.int64)
    ids = np.arange(n, dtype=np.float32).reshape(-1, 1)
    replay.add(ids, np.zeros(n, dtype=np.int64), np.zeros(n, np.float32), ids, np.zeros(n, np.float32))
    q, expected = replay_rate(b, len(replay))
    assert (q, expected) == (pytest.approx(0.064), pytest.approx(64.0))
    rng = np.random.default_rng(2024)
    sizes, counts = np.zeros(draws), np.zeros(n)
    for i in range(draws):
        batch = poisson_replay_batch(replay, b, rng, secure=False)
        picked = batch["obs"][:, 0].numpy().astype(int)
        assert len(np.unique(picked)) == len(picked)  # without replacement within a step
        sizes[i] = len(picked)
        counts[picked] += 1
    assert abs(sizes.mean() - q * n) < 5 * math.sqrt(n * q * (1 - q) / draws)
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.10)
    assert np.abs(counts - draws * q).max() < 5 * math.sqrt(draws * q * (1 - q))


def test_poisson_indices_for_ppo_minibatches() -> None:
    # Rollout of 256 rows, 4 minibatches -> q = 0.25; 4000 draws: mean size 64 with std 0.11 (tolerance 5 std).
    rng = np.random.default_rng(7)
    sizes = np.array([len(poisson_indices(256, 0.25, rng, secure=False)) for _ in range(4000)])
    assert abs(sizes.mean() - 64) < 5 * math.sqrt(256 * 0.25 * 0.75 / 4000)
    assert len(poisson_indices(256, 1.0, rng)) == 256
    with pytest.raises(ConfigError):
        poisson_indices(10, 0.0, rng)


def test_secure_poisson_sample_ignores_the_seeded_stream() -> None:
    # With secure noise (the default) the sample comes from the OS CSPRNG: the same seeded stream does not
    # regenerate it. Only secure=False samples from the stream.
    a = poisson_indices(4096, 0.25, np.random.default_rng(7))
    b = poisson_indices(4096, 0.25, np.random.default_rng(7), secure=True)
    assert not np.array_equal(a, b)
    assert np.array_equal(poisson_indices(4096, 0.25, np.random.default_rng(7), secure=False),
                          poisson_indices(4096, 0.25, np.random.default_rng(7), secure=False))
    sizes = np.array([len(poisson_indices(256, 0.25, np.random.default_rng(0), secure=True)) for _ in range(2000)])
    assert abs(sizes.mean() - 64) < 5 * math.sqrt(256 * 0.25 * 0.75 / 2000)


# --- names, checkpoints, federation ----------------------------------------------------------
@pytest.mark.parametrize("algo", ["dqn", "ppo"])
@pytest.mark.parametrize("mode", DPSGD_MODES)
def test_federated_names_and_spec_are_unchanged(algo: str, mode: str) -> None:
    plain, private = make(algo), make(algo, mode, z=1.0, clip=1.0)
    private.learn(STEPS[algo] // 2)
    assert [n for n, _ in private.federated_parameters()] == [n for n, _ in plain.federated_parameters()]
    assert private.parameter_spec() == plain.parameter_spec()
    for name, net in private.dp_networks().items():
        assert net is getattr(private, name) and not any("_module" in k for k in net.state_dict())
    private.set_flat(plain.get_flat())
    assert np.array_equal(private.get_flat(), plain.get_flat())


@pytest.mark.parametrize("algo", ["dqn", "ppo"])
def test_checkpoint_continues_dp_training_exactly(algo: str) -> None:
    a = make(algo, "mlp", z=1.0, clip=1.0)
    a.learn(STEPS[algo])
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    b = make(algo, "mlp", z=1.0, clip=1.0, seed=99, noise_seed=99)  # overwritten by the checkpoint
    b.load_state_dict(state)
    c = make(algo, "mlp", z=1.0, clip=1.0, seed=99, noise_seed=99)  # control: no checkpoint
    for agent in (a, b, c):
        agent.reseed(5)
        agent.learn(STEPS[algo] // 2)
    assert np.array_equal(a.get_flat(), b.get_flat())
    assert a.dpsgd.epsilon() == b.dpsgd.epsilon() and a.dpsgd.history == b.dpsgd.history
    assert not np.array_equal(a.get_flat(), c.get_flat())
    with pytest.raises(ValueError, match="DP-SGD"):
        make(algo).load_state_dict(state)
    with pytest.raises(ValueError, match="settings"):
        make(algo, "mlp", z=2.0, clip=1.0).load_state_dict(state)


FED = ["federation.n_clients=2", "federation.rounds=2", "federation.local_steps=200", "federation.eval_episodes=1",
       "agent.name=dqn", "agent.params.batch_sampling=poisson", "agent.params.learning_starts=100",
       "agent.params.train_freq=50", "agent.params.gradient_steps=4", "agent.params.hidden=[32, 32]",
       "privacy.dpsgd_noise_multiplier=1.0", "privacy.dpsgd_max_grad_norm=1.0"]


def test_federation_reports_record_epsilon_per_client_and_round(tmp_path) -> None:  # type: ignore[no-untyped-def]
    plain = run_experiment(load_config(overrides=[*FED, f"output_dir={tmp_path}", "name=plain"]), progress=False)
    res = run_experiment(load_config(overrides=[*FED, "privacy.dpsgd=true", f"output_dir={tmp_path}", "name=dp"]),
                         progress=False)
    rows = [r for r in res.clients if r["sampled"]]
    assert len(rows) == 4 and all("record_epsilon" in r for r in rows)
    by_client = {c: [r["record_epsilon"] for r in rows if r["client"] == c] for c in (0, 1)}
    for eps in by_client.values():
        assert 0 < eps[0] < eps[1] < math.inf  # the replay buffer lives on: epsilon composes over rounds
    assert all(r["record_delta"] == 1e-5 for r in rows)
    for fed_plain, fed_dp in zip(plain.federation.clients, res.federation.clients, strict=True):
        assert fed_dp.agent.parameter_spec() == fed_plain.agent.parameter_spec()
        assert fed_dp.agent.dpsgd is not None and fed_plain.agent.dpsgd is None
    assert not np.array_equal(plain.federation.global_params, res.federation.global_params)


@pytest.mark.parametrize(("protocol", "flag", "secure"), [
    ("plaintext", [], True), ("secagg", [], True), ("secagg", ["privacy.seeded_noise_experiment=true"], False),
    ("plaintext", ["privacy.seeded_noise_experiment=true"], False)])
def test_dpsgd_noise_is_secure_by_default_under_every_protocol(protocol, flag, secure) -> None:  # type: ignore[no-untyped-def]
    # As for client-level noise: seeded noise is regenerable from the config (which the server holds, and DP-SGD
    # protects against the server even under plaintext), so it needs the experiment flag.
    from securefrl.federation import Federation

    fed = Federation(load_config(overrides=[*FED, "privacy.dpsgd=true", f"protocol.name={protocol}", *flag]))
    assert all(c.agent.dpsgd.settings.secure is secure and (c.agent.dpsgd.generator is None) is secure
               for c in fed.clients)


@pytest.mark.parametrize(("extra", "field"), [
    (["federation.simulation=vectorized", "agent.name=ppo", "agent.params.batch_sampling=poisson",
      "agent.params.gae_lambda=0", "agent.params.norm_adv=false"], "federation.simulation"),
    (["agent.name=ppo", "agent.params.batch_sampling=poisson"], "agent.params.gae_lambda"),
    (["agent.name=ppo", "agent.params.batch_sampling=poisson", "agent.params.gae_lambda=0"], "agent.params.norm_adv"),
    (["agent.name=dqn"], "agent.params.batch_sampling"),
    (["agent.name=sac", "env.name=pendulum"], "privacy.dpsgd"),
    (["agent.name=dqn", "agent.params.batch_sampling=poisson", "federation.backend=ray"], "federation.backend"),
    (["agent.name=dqn", "agent.params.batch_sampling=poisson", "personalization.method=ditto"],
     "personalization.method"),
    (["agent.name=dqn", "agent.params.batch_sampling=poisson", "privacy.dpsgd_max_grad_norm=inf"],
     "privacy.dpsgd_max_grad_norm"),
    (["agent.name=dqn", "agent.params.batch_sampling=poisson", "privacy.dpsgd_grad_sample_mode=ghost"],
     "privacy.dpsgd_grad_sample_mode"),
])
def test_unsupported_dp_sgd_configurations_are_refused(extra: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["privacy.dpsgd=true", *extra])
    assert err.value.field == field


def test_poisson_sampling_is_refused_by_the_vectorized_simulation() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["federation.simulation=vectorized", "agent.name=ppo",
                               "agent.params.batch_sampling=poisson"])
    assert err.value.field == "agent.params.batch_sampling"


def test_agents_without_dp_sgd_refuse_it() -> None:
    sac = SACAgent(lambda: gym.make("Pendulum-v1"), SACConfig(), seed=0)
    with pytest.raises(ConfigError):
        enable_dp_sgd(sac, DPSGDSettings(), np.random.default_rng(0))
    with pytest.raises(ConfigError) as err:
        enable_dp_sgd(make("dqn", batch_sampling="uniform"), DPSGDSettings(), np.random.default_rng(0))
    assert err.value.field == "config.batch_sampling"
    agent = make("dqn", "mlp", z=1.0, clip=1.0)
    with pytest.raises(ConfigError):
        enable_dp_sgd(agent, DPSGDSettings(), np.random.default_rng(0))  # twice
