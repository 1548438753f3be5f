"""CKKS inside the federation: a failed opening aborts only its round; the reproducible mode replays a run."""

from __future__ import annotations

import json

import numpy as np

from protocols.ckks import CKKSProtocol
from securefrl.config import load_config
from securefrl.experiment import run_experiment
from securefrl.federation import Federation

TINY = ["federation.n_clients=3", "federation.rounds=2", "federation.local_steps=64", "federation.eval_episodes=1",
        "env.heterogeneity=0.5", "protocol.name=ckks"]


def _cfg(tmp_path, *extra, name="run"):
    return load_config(overrides=[*TINY, f"output_dir={tmp_path}", f"name={name}", *extra])


def test_a_failed_opening_aborts_the_round_and_the_run_goes_on(tmp_path):
    fed = Federation(_cfg(tmp_path))
    assert isinstance(fed.protocol, CKKSProtocol) and fed.protocol.keys == "threshold"
    before = fed.global_params.copy()
    fed.protocol.offline = {0, 1}  # below t = 2 of 3 at decryption

    record = fed.run_round()

    assert record.summary["aborted"].startswith("open failed: RoundAbortedError")
    assert (fed.global_params == before).all()  # model unchanged
    fed.protocol.offline = set()
    record = fed.run_round()
    assert record.summary["aborted"] is None and not (fed.global_params == before).all()


def test_an_update_too_large_to_encrypt_drops_that_client_only(tmp_path):
    fed = Federation(_cfg(tmp_path))

    def poison(round_id, deltas):
        deltas[0] = deltas[0] * 1e12  # far beyond CKKS's per-client value bound

    fed._poison = poison
    record = fed.run_round()

    rows = {row["client"]: row for row in record.clients}
    assert "UpdateRangeError" in rows[0]["rejected"]
    assert record.summary["aborted"] is None and record.summary["n_included"] == 2


def test_reproducible_ckks_runs_give_identical_rounds_and_are_marked(tmp_path):
    runs = [run_experiment(_cfg(tmp_path, "protocol.params.seed=3", name=n), progress=False) for n in ("a", "b")]
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time") and k != "round_time"}  # noqa: E731
                          for r in rows]
    a, b = (strip(r.rounds) for r in runs)
    assert a == b
    assert runs[0].federation.global_params.tobytes() == runs[1].federation.global_params.tobytes()
    summary = json.loads((runs[0].path / "summary.json").read_text())
    assert "unfit for deployment" in summary["protocol_mode"]
    assert np.isfinite(summary["final_mean_return"])


def test_shared_key_mode_is_reachable_from_the_config_and_labelled(tmp_path):
    fed = Federation(_cfg(tmp_path, "protocol.params.keys=shared"))
    assert "SHARED KEY" in fed.protocol.label
    assert fed.run_round().summary["aborted"] is None


def test_what_the_server_keeps_of_a_ckks_round_decrypts_no_update(tmp_path):
    from attacks.protocol.ckks import recover_updates
    from protocols.base import OpenedAggregate

    fed = Federation(_cfg(tmp_path, "federation.rounds=1"))
    sent: dict[int, np.ndarray] = {}
    protect = fed.protocol.protect

    def spy(cid, r, update, weight):
        sent[cid] = np.asarray(update, dtype=np.float64).copy()
        return protect(cid, r, update, weight)

    fed.protocol.protect = spy
    before = fed.global_params.astype(np.float64)
    record = fed.run_round()
    # the global model (what checkpoint.pt and the optimizer keep) minus the old one is the released mean
    mean = fed.global_params.astype(np.float64) - before
    opened = OpenedAggregate(mean, float(record.summary["n_included"]), sorted(sent))

    recovered = recover_updates(fed.protocol.server, 0, opened)

    assert np.max(np.abs(mean - np.mean(list(sent.values()), axis=0))) < 1e-6  # the model did move by the mean
    assert min(np.max(np.abs(recovered[c] - sent[c])) for c in sent) > 1.0
