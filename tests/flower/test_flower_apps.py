"""The Flower app directory, the config checks and the reply parsing (no Flower processes started here)."""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.common.config import validate_config

from protocols.plaintext import PlaintextProtocol
from securefrl.cli import main
from securefrl.config import load_config
from securefrl.errors import ConfigError
from securefrl.flower import common
from securefrl.flower.appdir import APP_MODULE, register, write_app
from securefrl.protocol_factory import PROTOCOLS


def test_generated_app_directory_is_a_valid_flower_app_embedding_the_config(tmp_path):
    cfg = load_config(overrides=["federation.n_clients=3", "federation.rounds=2", "name=My run"])
    out = write_app(cfg, tmp_path / "app", tmp_path / "results")
    data = tomllib.loads((out / "pyproject.toml").read_text())
    ok, errors, _ = validate_config(data, check_module=False)
    assert ok, errors
    assert data["tool"]["flwr"]["app"]["components"] == {"serverapp": f"{APP_MODULE}:server",
                                                          "clientapp": f"{APP_MODULE}:client"}
    run_config = data["tool"]["flwr"]["app"]["config"]
    assert common.config_from_run_config(run_config).to_dict() == cfg.to_dict()
    assert run_config[common.RESULTS_KEY] == str((tmp_path / "results").resolve())
    assert (out / f"{APP_MODULE}.py").is_file()


def test_flower_app_command_takes_the_same_config_file_and_overrides(tmp_path, capsys):
    conf = tmp_path / "exp.toml"
    conf.write_text('name = "from-file"\n[federation]\nn_clients = 4\n')
    from securefrl import cli

    argv = ["flower-app", str(conf), "--set", "federation.rounds=3", "--out", str(tmp_path / "a")]
    parser = cli.build_parser()
    if "flower-app" not in parser.format_help():  # entry point not installed from this checkout: add it here
        sub = next(a for a in parser._actions if a.dest == "command")
        register(sub)
        assert (args := parser.parse_args(argv)).func(args) == 0
    else:
        assert main(argv) == 0
    run_config = tomllib.loads((tmp_path / "a" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    cfg = json.loads(run_config[common.RUN_CONFIG_KEY])
    assert cfg["name"] == "from-file" and cfg["federation"]["n_clients"] == 4 and cfg["federation"]["rounds"] == 3
    assert "flwr run" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, field, why", [
    (["federation.simulation=vectorized"], "federation.simulation", "one agent"),
    (["privacy.placement=central", "privacy.adaptive_clipping=true"], "privacy.adaptive_clipping", "clip bit"),
    (["attack.name=min_max", "attack.n_malicious=1"], "attack.name", "omniscient"),
    (["attack.name=reward_flip", "attack.n_malicious=1"], "attack.name", "environment"),
    (["personalization.method=fedper"], "personalization.method", "'fedper'"),
])
def test_configs_the_apps_do_not_run_are_refused_up_front_naming_the_field(tmp_path, overrides, field, why):
    cfg = load_config(overrides=overrides)
    with pytest.raises(common.UnsupportedOnFlowerError) as err:
        write_app(cfg, tmp_path / "app")
    assert err.value.field == field and why in str(err.value) and "securefrl run" in str(err.value)
    assert isinstance(err.value, ConfigError)


def test_dp_sgd_is_refused_up_front(tmp_path):
    cfg = load_config(overrides=["agent.name=dqn", "agent.params.batch_sampling=poisson"])
    cfg.privacy.dpsgd = True  # set after validation: load_config's DP-SGD checks import Opacus (slow, not tested here)
    with pytest.raises(common.UnsupportedOnFlowerError, match="DP-SGD") as err:
        write_app(cfg, tmp_path / "app")
    assert err.value.field == "privacy.dpsgd"


@pytest.mark.parametrize("overrides", [
    ["privacy.placement=central"], ["privacy.placement=distributed", "protocol.name=secagg"],
    ["attack.name=sign_flip", "attack.n_malicious=1"], ["personalization.method=finetune"],
])
def test_dp_update_attacks_and_finetune_pass_the_check(tmp_path, overrides):
    common.check_supported(load_config(overrides=overrides))


class _PlaintextCopy(PlaintextProtocol):
    name = "plaintext-copy"


@pytest.mark.parametrize("role", ["one-shot", None, "carrier-pigeon"])
def test_the_flower_message_flow_is_the_role_the_protocol_declares_not_its_name(tmp_path, role):
    """A third-party protocol runs on Flower by declaring a role in its registration, and only then."""
    meta = {} if role is None else {"flower_role": role}
    PROTOCOLS.register(_PlaintextCopy.name, _PlaintextCopy, **meta)
    try:
        cfg = load_config(overrides=["protocol.name=plaintext-copy"])
        if role == "one-shot":
            common.check_supported(cfg)
            assert common.flower_role(cfg) == common.ONE_SHOT
            return
        with pytest.raises(common.UnsupportedOnFlowerError) as err:
            write_app(cfg, tmp_path / "app")
        assert err.value.field == "protocol.name" and "plaintext-copy" in str(err.value)
        assert "that run on Flower: ckks, plaintext, secagg" in str(err.value)
    finally:
        PROTOCOLS.unregister(_PlaintextCopy.name)


def test_the_builtin_protocols_declare_their_flower_roles():
    roles = {name: common.flower_role(load_config(overrides=[f"protocol.name={name}"]))
             for name in ("plaintext", "secagg", "ckks")}
    assert roles == {"plaintext": common.ONE_SHOT, "secagg": common.SECAGG_PLUS, "ckks": common.THRESHOLD_CKKS}


def _reply(**fields):
    return RecordDict({common.REPLY: ConfigRecord(fields)})


def test_reply_fields_are_type_and_size_checked():
    good = _reply(client=1, payload=b"abc", return_local=3.0)
    assert common.reply_field(good, "payload", bytes) == b"abc"
    assert common.reply_field(good, "return_local", float) == 3.0
    with pytest.raises(common.MalformedReplyError, match="no 'reply'"):
        common.reply_field(RecordDict({}), "payload", bytes)
    with pytest.raises(common.MalformedReplyError, match="lacks field"):
        common.reply_field(_reply(client=1), "payload", bytes)
    with pytest.raises(common.MalformedReplyError, match="expected bytes"):
        common.reply_field(_reply(payload="text"), "payload", bytes)
    with pytest.raises(common.MalformedReplyError, match="limit"):
        common.reply_field(_reply(payload=b"x" * 11), "payload", bytes, max_bytes=10)
    with pytest.raises(common.MalformedReplyError, match="not finite"):
        common.reply_field(_reply(return_local=float("nan")), "return_local", float)
    with pytest.raises(common.MalformedReplyError, match="expected int"):
        common.reply_field(_reply(client=True), "client", int)


def test_global_model_record_is_checked_for_length():
    content = RecordDict({common.GLOBAL: ArrayRecord([np.arange(4, dtype=np.float32)])})
    assert common.global_params_from(content, 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(common.MalformedReplyError, match="expected 5"):
        common.global_params_from(content, 5)
