"""securefrl on Flower's deployment engine: a SuperLink and 3 SuperNodes on 127.0.0.1, separate processes.

One deployment serves every test of this module (starting Flower costs more than a tiny round), with TLS on
every link (a throwaway CA; the SuperNodes and ``flwr run`` verify the SuperLink's certificate). Each run is
2 rounds of 64 local steps; the machine's load sets the wall time (every Flower message starts a fresh
ClientApp process).
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("flwr")

from securefrl.config import load_config
from securefrl.experiment import run_experiment
from securefrl.flower.appdir import APP_MODULE, write_app
from securefrl.flower.local import LocalDeployment
from securefrl.flower.secagg_state import write_enrolment
from securefrl.flower.tls import peer_certificate
from securefrl.results import latest_run, read_jsonl

pytestmark = pytest.mark.deployment  # separate Flower processes: `make test` runs these as its second step

TINY = ["federation.n_clients=3", "federation.rounds=2", "federation.local_steps=64", "federation.eval_episodes=1",
        "env.heterogeneity=1.0"]
#: Fields of rounds.jsonl that depend only on the seed (times do not; Flower adds its own byte counts).
METRICS = ("round", "mean_return", "min_return", "max_return", "mean_local_return", "n_sampled", "n_included",
           "bytes_up", "aborted", "bytes_down_aggregate", "env_steps_per_client")

# A client whose train replies carry bytes that are no securefrl envelope (a malicious or broken client).
TAMPER = '''
from securefrl.flower.client_app import build_client_app
from securefrl.flower.server_app import app as server


def corrupt_payload(message, context, call_next):
    reply = call_next(message, context)
    if message.metadata.message_type == "train" and int(context.node_config["partition-id"]) == 1:
        reply.content.config_records["reply"]["payload"] = b"SFRL not an envelope"
    return reply


client = build_client_app(mods=[corrupt_payload])
__all__ = ["client", "server"]  # Flower checks the component names statically
'''


@pytest.fixture(scope="module")
def enrolment(tmp_path_factory):
    """SecAgg identity keys, enrolled out of band; each SuperNode is started with its own key file."""
    return write_enrolment(3, tmp_path_factory.mktemp("enrolment"))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, enrolment):
    with LocalDeployment(3, tmp_path_factory.mktemp("flower"), enrolment=enrolment, tls=True) as dep:
        yield dep


def test_superlink_speaks_tls_under_the_throwaway_ca_only(deployment, tmp_path):
    cert = peer_certificate("127.0.0.1", deployment.port, deployment.tls.ca)
    assert ("IP Address", "127.0.0.1") in cert["subjectAltName"]
    import ssl

    from securefrl.flower.tls import write_tls_files

    other = write_tls_files(tmp_path / "other")  # a CA that did not sign the SuperLink's certificate
    with pytest.raises(ssl.SSLCertVerificationError):
        peer_certificate("127.0.0.1", deployment.port, other.ca)
    config = (deployment.home / "config.toml").read_text()
    assert "insecure" not in config and f'root-certificates = "{deployment.tls.ca}"' in config


def _same(got, want):
    """Equal metrics, numbers up to float rounding."""
    assert got.keys() == want.keys()
    for k, v in want.items():
        if isinstance(v, float):
            assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
        else:
            assert got[k] == v, k


# CKKS in reproducible mode (seeded draws, unfit for deployment) so both runs flood with the same noise.
PROTOCOLS = {"plaintext": [], "secagg": [], "ckks": ["protocol.params.seed=1"]}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_deployment_equals_in_process_run(deployment, enrolment, tmp_path, protocol):
    extra = [f"protocol.name={protocol}", *PROTOCOLS[protocol]]
    cfg = load_config(overrides=[*TINY, f"output_dir={tmp_path}", "name=flower", *extra])
    app = write_app(cfg, tmp_path / "app", tmp_path, round_timeout=300, connect_timeout=120, enrolment_dir=enrolment)
    deployment.run(app, timeout=1500)
    run = latest_run(tmp_path / "flower")
    assert run.parent == tmp_path / "flower" and run.name[:8].isdigit()  # <output_dir>/<name>/<timestamp>/
    assert {"config.yaml", "rounds.jsonl", "clients.jsonl", "summary.json"} <= {f.name for f in run.iterdir()}
    flower = read_jsonl(run / "rounds.jsonl")
    ref = run_experiment(load_config(overrides=[*TINY, f"output_dir={tmp_path}", "name=ref", *extra]),
                         progress=False)
    # In-process CKKS predicts a round's opening bytes when it combines; Flower counts the bytes its clients
    # really sent in the opening round-trips, so bytes_up is compared for the other protocols only.
    metrics = [k for k in METRICS if not (protocol == "ckks" and k == "bytes_up")]
    assert len(flower) == len(ref.rounds) == 2
    for got, want in zip(flower, ref.rounds, strict=True):
        _same({k: got[k] for k in metrics}, {k: want[k] for k in metrics})
        assert got["flower_bytes_up"] > got["bytes_up"]  # the payload travels inside Flower's records
    clients = read_jsonl(run / "clients.jsonl")
    assert [c["return_global"] for c in clients] == [c["return_global"] for c in ref.clients]
    if protocol != "ckks":
        assert [c.get("bytes_up") for c in clients] == [c.get("bytes_up") for c in ref.clients]


def _rounds_done(parent):
    run = latest_run(parent)
    return run is not None and (run / "rounds.jsonl").is_file() and len(read_jsonl(run / "rounds.jsonl")) > 0


def test_malformed_client_and_killed_supernode_drop_only_that_client(deployment, tmp_path):
    cfg = load_config(overrides=[*TINY, f"output_dir={tmp_path}", "name=faulty"])
    app = write_app(cfg, tmp_path / "app", tmp_path, round_timeout=150, connect_timeout=120)
    (app / f"{APP_MODULE}.py").write_text(TAMPER)
    run = deployment.submit(app)
    deadline = time.monotonic() + 600
    while not _rounds_done(tmp_path / "faulty"):  # round 0 finished: round 1 is under way
        assert run.poll() is None, "flwr run ended before its first round"
        assert time.monotonic() < deadline, "round 0 did not finish in time"
        time.sleep(1.0)
    deployment.kill_supernode(2)
    try:
        deployment.wait(run, timeout=900)
    finally:
        deployment.start_supernode(2)  # leave the shared deployment whole
    found = latest_run(tmp_path / "faulty")
    rounds = read_jsonl(found / "rounds.jsonl")
    clients = read_jsonl(found / "clients.jsonl")
    assert [r["round"] for r in rounds] == [0, 1]  # the run went on to the end
    # round 0: client 1's garbage is rejected by the protocol's parser, the other two are aggregated
    assert rounds[0]["n_included"] == 2 and rounds[0]["aborted"] is None
    row = next(c for c in clients if c["round"] == 0 and c["client"] == 1)
    assert "EnvelopeError" in row["rejected"] or "PayloadError" in row["rejected"]
    # round 1: client 2's SuperNode is gone -- a dropout; clients 0 and 1 still make the round
    assert rounds[1]["n_included"] == 1 and rounds[1]["aborted"] is None  # client 1 still sends garbage
    row = next(c for c in clients if c["round"] == 1 and c["client"] == 2)
    assert "dropped out" in row["rejected"]
    assert rounds[1]["n_evaluated"] == 2
