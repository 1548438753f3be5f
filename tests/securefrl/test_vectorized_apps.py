"""The batched-env base and the vectorized simulation of the application families.

The vectorized run of edge caching, MEC offloading, RAN access and Acrobot must write the same round metrics as the loop
(the differential test); the batched Acrobot must equal gymnasium's step for step; a batch's copies taken out,
stepped, put back or checkpointed must continue exactly as
the uninterrupted batch; and the config check reads the family registry's batched capability.
"""

import glob
import json

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from securefrl.config import load_config
from securefrl.envs import draw_client_envs
from securefrl.envs.batched import batch_for
from securefrl.envs.families import batched_families, batched_target
from securefrl.errors import ConfigError
from securefrl.experiment import run_experiment

TINY = ["federation.n_clients=3", "federation.rounds=2", "federation.local_steps=64", "federation.eval_episodes=1",
        "env.heterogeneity=1.0", "agent.params={n_envs: 2, n_steps: 16, n_epochs: 1, n_minibatches: 2}"]
TIMES = ("round_time",)


@pytest.mark.parametrize("family", ["edge_caching", "mec_offloading", "ran_access", "acrobot"])
def test_vectorized_run_writes_the_loops_round_metrics(family, tmp_path):
    rows = {}
    for sim in ("loop", "vectorized"):
        run_experiment(load_config(overrides=[*TINY, f"env.name={family}", f"federation.simulation={sim}",
                                              f"output_dir={tmp_path}", f"name={sim}"]), progress=False)
        (path,) = glob.glob(str(tmp_path / sim / "*" / "rounds.jsonl"))
        rows[sim] = [json.loads(line) for line in open(path)]
    assert len(rows["loop"]) == len(rows["vectorized"]) == 2
    for a, b in zip(rows["loop"], rows["vectorized"], strict=True):
        assert a.keys() == b.keys()
        same = {k: a[k] for k in a if not k.startswith("time_") and k not in TIMES}
        assert same == {k: b[k] for k in same}
    if family != "acrobot":  # 128 steps never swing Acrobot up: every return is -500 on both paths
        assert rows["loop"][0]["mean_return"] != rows["loop"][1]["mean_return"]  # training moved something


def test_acrobot_batch_equals_gymnasium_step_for_step():
    # 4 clients at the widest heterogeneity, 2 copies each, vs gymnasium's own Acrobot-v1 envs.
    specs = draw_client_envs("acrobot", 4, 1.0, np.random.default_rng(3))
    batch = batch_for(specs, 2)
    ref = SyncVectorEnv([s.make for s in specs for _ in range(2)], autoreset_mode=AutoresetMode.SAME_STEP)
    seeds = [11 * i + 5 for i in range(8)]
    obs_ref, _ = ref.reset(seed=seeds)
    assert np.array_equal(batch.reset(seeds), obs_ref)
    rng = np.random.default_rng(0)
    n_term = n_trunc = 0
    for t in range(1200):
        o = batch.obs  # pump energy: torque along the shoulder velocity while the elbow moves with it
        pump = np.where(o[:, 5] * o[:, 4] >= 0, np.where(o[:, 4] > 0, 2, 0), 1)
        actions = pump if t % 4 else rng.integers(0, 3, 8)
        step = batch.step(actions)
        obs_ref, rew_ref, term_ref, trunc_ref, info = ref.step(actions)
        assert np.array_equal(batch.obs, obs_ref), t
        assert np.array_equal(step.rewards, rew_ref.astype(np.float32)), t
        assert np.array_equal(step.terminated, term_ref) and np.array_equal(step.truncated, trunc_ref), t
        done = term_ref | trunc_ref
        if done.any():
            final = np.stack([info["final_obs"][i] for i in np.flatnonzero(done)])
            assert np.array_equal(step.next_obs[done], final), t
        n_term, n_trunc = n_term + int(term_ref.sum()), n_trunc + int(trunc_ref.sum())
    assert n_term > 5 and n_trunc >= 2  # both ways of ending were exercised


@pytest.mark.parametrize("family", ["cartpole", "acrobot", "edge_caching", "mec_offloading", "ran_access"])
def test_copies_taken_out_and_checkpointed_continue_exactly(family):
    specs = draw_client_envs(family, 3, 1.0, np.random.default_rng(4))
    whole, other = batch_for(specs, 2), batch_for(specs, 2)
    seeds = list(range(20, 26))
    whole.reset(seeds)
    other.reset(seeds)
    rng = np.random.default_rng(0)
    rows = np.array([1, 4, 5])
    for t in range(120):  # crosses episode ends (autoreset) for every family
        actions = rng.integers(0, whole.action_space.n, whole.n)
        ref = whole.step(actions)
        part = other.subset(rows)  # out, step, back in: what a population does with a round's clients
        got = part.step(actions[rows])
        other.assign(rows, part)
        rest = np.setdiff1d(np.arange(other.n), rows)
        rest_batch = other.subset(rest)
        rest_batch.step(actions[rest])
        other.assign(rest, rest_batch)
        np.testing.assert_array_equal(got.next_obs, ref.next_obs[rows])
        np.testing.assert_array_equal(other.obs, whole.obs)
        if t == 60:  # a checkpoint of every copy, restored into a fresh batch
            fresh = batch_for(specs, 2)
            fresh.set_state(np.arange(fresh.n), other.get_state(np.arange(other.n)))
            other = fresh
    np.testing.assert_array_equal(other.ep_returns, whole.ep_returns)


def test_vectorized_capability_comes_from_the_family_registry():
    assert {"acrobot", "cartpole", "edge_caching", "mec_offloading", "ran_access"} <= set(batched_families())
    assert batched_target("CartPole-v1") == batched_target("cartpole") != ""
    assert batched_target("mountaincar") == ""
    load_config(overrides=["env.name=mec_offloading", "federation.simulation=vectorized"])
    with pytest.raises(ConfigError, match=r"batched families: .*edge_caching") as err:
        load_config(overrides=["env.name=mountaincar", "federation.simulation=vectorized"])
    assert err.value.field == "federation.simulation"


def test_heterogeneity_command_writes_json_markdown_and_png(tmp_path, capsys):
    from securefrl.cli import main

    argv = ["heterogeneity", "mec_offloading", "--levels", "0", "1", "--methods", "fedavg", "--seeds", "1",
            "--clients", "2", "--rounds", "1", "--local-steps", "32", "--final-episodes", "1", "--out",
            str(tmp_path), "--quiet"]
    assert main(argv) == 0
    out = json.loads((tmp_path / "heterogeneity_mec_offloading.json").read_text())
    methods = {(r["h"], r["method"]) for r in out["summary"]}
    assert methods == {(h, m) for h in (0.0, 1.0) for m in ("local", "fedavg")}  # local-only always joins
    assert all(len(r["final"]) == 2 and r["simulation"] == "vectorized" for r in out["runs"])
    assert (tmp_path / "heterogeneity_mec_offloading_mec_offloading.png").stat().st_size > 0
    assert "| mec_offloading | 1.0 | fedavg |" in capsys.readouterr().out
    stream = tmp_path / "heterogeneity_mec_offloading.jsonl"
    before = stream.read_text()
    assert len(before.splitlines()) == 6  # per h: local, and the FedAvg run's fedavg + finetune records
    assert main(argv) == 0  # a rerun continues from the records: nothing left to train
    assert stream.read_text() == before


def test_a_typed_heterogeneity_grid_draws_client_types_and_keeps_its_records_apart(tmp_path, capsys):
    from securefrl.cli import main

    argv = ["heterogeneity", "edge_caching", "--levels", "1", "--methods", "fedavg", "--seeds", "1", "--clients", "4",
            "--rounds", "1", "--local-steps", "32", "--final-episodes", "1", "--out", str(tmp_path), "--quiet"]
    assert main([*argv, "--client-types", "2", "--type-spread", "0"]) == 0
    out = json.loads((tmp_path / "heterogeneity_edge_caching.json").read_text())
    physics = out["runs"][0]["physics"]
    assert physics[0] == physics[2] != physics[1] == physics[3]  # spread 0: a type's clients are identical
    assert all(r["settings"]["client_types"] == 2 for r in out["runs"])
    assert "4 clients in 2 types (spread 0)" in (tmp_path / "heterogeneity_edge_caching.md").read_text()
    typed = (tmp_path / "heterogeneity_edge_caching.jsonl").read_text()
    assert main(argv) == 0  # the untyped grid does not reuse the typed records: it trains its own
    untyped = json.loads((tmp_path / "heterogeneity_edge_caching.json").read_text())["runs"]
    assert len((tmp_path / "heterogeneity_edge_caching.jsonl").read_text()) > len(typed)
    assert all("client_types" not in r["settings"] for r in untyped) and untyped[0]["physics"][0] != physics[0]
    capsys.readouterr()


def test_a_grid_override_reaches_every_run_and_keeps_its_records_apart(tmp_path, capsys):
    from securefrl.cli import main

    argv = ["heterogeneity", "mec_offloading", "--levels", "0", "--methods", "fedavg", "--seeds", "1", "--clients",
            "2", "--rounds", "1", "--local-steps", "32", "--final-episodes", "1", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    plain = json.loads((tmp_path / "heterogeneity_mec_offloading.json").read_text())["runs"]
    assert main([*argv, "--set", "agent.params.lr=0.03"]) == 0
    runs = json.loads((tmp_path / "heterogeneity_mec_offloading.json").read_text())["runs"]
    assert all(r["settings"]["extra"] == ["agent.params.lr=0.03"] for r in runs)
    assert "every run also: agent.params.lr=0.03" in (tmp_path / "heterogeneity_mec_offloading.md").read_text()
    # a 30x learning rate (0.03 against PPO's 1e-3) trains another model from the same seed: the override arrived
    assert [r["final"] for r in runs] != [r["final"] for r in plain]
    assert main([*argv, "--set", "agent.params.bogus=1"]) == 0  # a refused override is recorded, not a crash
    bad = json.loads((tmp_path / "heterogeneity_mec_offloading.json").read_text())["runs"]
    assert all("bogus" in r["refused"] for r in bad)
    capsys.readouterr()


def test_a_benchmark_run_that_cannot_be_vectorized_says_why_it_ran_on_the_loop():
    from securefrl.personalization.benchmark import train_and_deploy

    base = ["federation.n_clients=2", "federation.rounds=1", "federation.local_steps=32", "federation.eval_episodes=1",
            "personalization.method=finetune"]
    loop = train_and_deploy(["env.name=mountaincar", *base], {"fedavg": "global"}, 1)[0]
    assert loop["simulation"] == "loop" and "batched implementation" in loop["loop_reason"]
    fast = train_and_deploy(["env.name=mec_offloading", *base], {"fedavg": "global"}, 1)[0]
    assert fast["simulation"] == "vectorized" and "loop_reason" not in fast


def test_every_heterogeneity_method_spends_the_same_environment_steps_per_client():
    from securefrl.personalization.benchmark import GridSettings, run_heterogeneity_job

    grid = GridSettings(clients=2, rounds=1, local_steps=64, final_episodes=1)
    steps = {run: run_heterogeneity_job({"family": "mec_offloading", "h": 1.0, "run": run, "seed": 0,
                                         "grid": grid})[0]["env_steps_per_client"] for run in ("local", "ditto")}
    assert steps == {"local": 64.0, "ditto": 64.0}  # Ditto's two models get half the steps each
