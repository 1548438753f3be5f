"""Client-level DP inside the round loop: placements, epsilon per round, budget stop, resume."""

import numpy as np
import pytest

from securefrl.config import load_config
from securefrl.errors import ConfigError
from securefrl.experiment import run_experiment
from securefrl.federation import Federation
from securefrl.privacy.accounting import PrivacyAccountant

TINY = ["federation.n_clients=4", "federation.rounds=3", "federation.local_steps=64", "federation.eval_episodes=1",
        "federation.client_fraction=0.5", "privacy.clip_norm=1.0"]


def cfg(tmp_path, *extra, name="dp"):
    return load_config(overrides=[*TINY, f"output_dir={tmp_path}", f"name={name}", *extra])


@pytest.mark.parametrize("placement", ["central", "distributed", "local"])
def test_epsilon_reported_every_round_matches_the_accountant(tmp_path, placement):
    res = run_experiment(cfg(tmp_path, f"privacy.placement={placement}", "privacy.noise_multiplier=1.1"),
                         progress=False)
    eps = [r["epsilon"] for r in res.rounds]
    assert all(np.isfinite(eps)) and eps == sorted(eps) and eps[0] > 0
    server, outsiders = PrivacyAccountant("rdp"), PrivacyAccountant("rdp")
    for _ in range(3):
        server.step(1.1, 1.0)  # the server knows who took part: no amplification
        outsiders.step(1.1, 0.5)  # 2 of 4 clients per round, no dropouts
    assert eps[-1] == pytest.approx(server.epsilon(1e-5), rel=1e-9)  # the headline holds against the server
    assert res.rounds[-1]["epsilon_server"] == eps[-1]
    assert res.rounds[-1]["epsilon_outsiders"] == pytest.approx(outsiders.epsilon(1e-5), rel=1e-9)
    assert res.summary["epsilon"] == eps[-1] and res.summary["epsilon_outsiders"] < eps[-1]


def test_updates_are_clipped_to_the_dp_bound(tmp_path):
    res = run_experiment(cfg(tmp_path, "privacy.placement=central", "privacy.noise_multiplier=0.5"), progress=False)
    norms = [r["update_norm"] for r in res.clients if "update_norm" in r]
    assert norms and max(norms) <= 1.0 * (1 + 1e-6)


def test_budget_stops_training_before_it_is_exceeded(tmp_path):
    res = run_experiment(cfg(tmp_path, "privacy.placement=central", "privacy.noise_multiplier=2.0",
                             "privacy.epsilon_budget=3.0", "federation.rounds=50"), progress=False)
    assert res.summary["stopped_reason"].startswith("privacy budget")
    assert 0 < len(res.rounds) and res.rounds[-1]["epsilon"] <= 3.0
    assert len(res.rounds) < 50


def test_target_epsilon_sets_the_noise(tmp_path):
    res = run_experiment(cfg(tmp_path, "privacy.placement=central", "privacy.target_epsilon=3.0"), progress=False)
    assert 2.9 <= res.rounds[-1]["epsilon"] <= 3.0


def test_resume_reports_the_same_epsilon(tmp_path):
    seeded = "privacy.seeded_noise_experiment=true"  # bit-identical needs the reproducible (experiment) noise
    full = run_experiment(cfg(tmp_path, "privacy.placement=distributed", seeded, name="full"), progress=False)
    c = cfg(tmp_path, "privacy.placement=distributed", seeded, name="part")
    run_experiment(c, progress=False, stop_after=1)
    resumed = run_experiment(c, resume=True, progress=False)
    assert [r["epsilon"] for r in resumed.rounds] == [r["epsilon"] for r in full.rounds]
    assert resumed.federation.global_params.tobytes() == full.federation.global_params.tobytes()


def test_central_noise_under_ckks_is_refused_with_alternatives(tmp_path):
    with pytest.raises(ConfigError, match="distributed") as info:
        Federation(cfg(tmp_path, "privacy.placement=central", "protocol.name=ckks"))
    assert info.value.field == "privacy.placement"


def test_dp_and_federation_clip_are_not_both_set(tmp_path):
    with pytest.raises(ConfigError, match=r"privacy\.clip_norm"):
        Federation(cfg(tmp_path, "privacy.placement=local", "federation.clip_norm=2.0"))


def test_distributed_noise_under_secagg(tmp_path):
    res = run_experiment(cfg(tmp_path, "privacy.placement=distributed", "protocol.name=secagg"), progress=False)
    assert all(np.isfinite(r["epsilon"]) for r in res.rounds)
    assert all(r["n_included"] == 2 for r in res.rounds)
    assert res.summary["dp_noise"] == "secure"  # secure noise by default under a secure protocol


def test_seeded_noise_under_secagg_needs_the_experiment_flag_and_is_marked(tmp_path):
    res = run_experiment(cfg(tmp_path, "privacy.placement=distributed", "protocol.name=secagg",
                             "privacy.seeded_noise_experiment=true", "federation.rounds=1"), progress=False)
    assert res.summary["dp_noise"] == "seeded" and res.rounds[0]["dp_noise"] == "seeded"


def test_secagg_clip_that_would_clip_the_noise_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="clip the noise") as info:
        Federation(cfg(tmp_path, "privacy.placement=distributed", "protocol.name=secagg",
                       "protocol.params.clip=1.0"))
    assert info.value.field == "protocol.params.clip"


def test_resume_refuses_an_edited_accountant_history(tmp_path):
    import torch

    c = cfg(tmp_path, "privacy.placement=distributed", name="edited")
    res = run_experiment(c, progress=False, stop_after=2)
    ckpt = res.path / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    hist = state["federation"]["dp"]["accountant"]["history"]
    hist[-1][2] = 1  # two accounted rounds become one: epsilon drops
    torch.save(state, ckpt)
    with pytest.raises(ConfigError, match=r"disagrees with rounds\.jsonl"):
        run_experiment(c, resume=True, progress=False)


def test_adaptive_clipping_moves_the_bound(tmp_path):
    res = run_experiment(cfg(tmp_path, "privacy.placement=central", "privacy.adaptive_clipping=true",
                             "privacy.clip_norm=100.0", "privacy.noise_multiplier=1.0",
                             "privacy.seeded_noise_experiment=true"), progress=False)  # reproducible noisy count
    bounds = [r["clip_norm"] for r in res.rounds]
    assert bounds[-1] < bounds[0] <= 100.0  # every update is far below 100: the bound shrinks


def test_asking_for_seeded_noise_through_secure_noise_is_refused_naming_the_experiment_flag(tmp_path):
    with pytest.raises(ConfigError, match="seeded_noise_experiment") as info:
        cfg(tmp_path, "privacy.placement=local", "privacy.secure_noise=false")
    assert info.value.field == "privacy.secure_noise"


def test_local_noise_under_plaintext_is_secure_by_default(tmp_path):
    # The plaintext server sees each noisy update and holds the config's seed: seeded noise would be removable.
    res = run_experiment(cfg(tmp_path, "privacy.placement=local"), progress=False)
    assert res.summary["dp_noise"] == "secure" and all(r["dp_noise"] == "secure" for r in res.rounds)
