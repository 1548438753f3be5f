"""Config loading and validation: every refusal names the field and what is allowed."""

import pytest

from securefrl.config import ExperimentConfig, load_config
from securefrl.configtools import describe, field_docs
from securefrl.errors import ConfigError


def test_defaults_are_valid_and_documented():
    cfg = load_config()
    assert isinstance(cfg, ExperimentConfig)
    rows = describe(ExperimentConfig)
    assert all(doc for _, _, doc in rows), [name for name, _, doc in rows if not doc]
    assert "heterogeneity" in field_docs(type(cfg.env))


def test_toml_and_yaml_files_with_overrides(tmp_path):
    (tmp_path / "a.toml").write_text('name = "x"\n[federation]\nrounds = 4\n[env]\nheterogeneity = 0.2\n')
    (tmp_path / "b.yaml").write_text("name: y\nfederation:\n  rounds: 6\n")
    a = load_config(tmp_path / "a.toml", ["federation.n_clients=3", "env.overrides={pole_length: 0.8}"])
    assert (a.name, a.federation.rounds, a.federation.n_clients, a.env.heterogeneity) == ("x", 4, 3, 0.2)
    assert a.env.overrides == {"pole_length": 0.8}
    b = load_config(tmp_path / "b.yaml")
    assert (b.name, b.federation.rounds) == ("y", 6)


@pytest.mark.parametrize(
    ("override", "field", "hint"),
    [
        ("federation.roundz=3", "federation.roundz", "allowed keys"),
        ("bogus=1", "bogus", "allowed keys"),
        ("env.heterogeneity=1.5", "env.heterogeneity", "[0.0, 1.0]"),
        ("federation.client_fraction=0", "federation.client_fraction", "allowed"),
        ("federation.rounds=two", "federation.rounds", "integer"),
        ("protocol.name=rsa", "protocol.name", "plaintext"),
        ("federation.server_optimizer=sgd", "federation.server_optimizer", "fedadam"),
        ("agent.name=a3c", "agent.name", "dqn"),
        ("agent.params={no_such_hyperparameter: 1}", "agent.params.no_such_hyperparameter", "allowed keys"),
        ("env.name=NoSuchEnv-v9", "env.name", "cartpole"),
    ],
)
def test_bad_values_are_refused_with_field_and_allowed_values(override, field, hint):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert info.value.field == field
    assert hint in str(info.value)


def test_unknown_env_parameter_is_refused():
    with pytest.raises(ConfigError, match="no_such_param"):
        from securefrl.federation import Federation

        Federation(load_config(overrides=["env.overrides={no_such_param: 1.0}", "federation.n_clients=1"]))


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ConfigError, match="toml"):
        load_config(tmp_path / "c.json")
    (tmp_path / "d.toml").write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="TOML"):
        load_config(tmp_path / "d.toml")
