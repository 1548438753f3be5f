"""One registry type for every plug-in kind; compatibility read from declared capabilities, not names."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import numpy as np
import pytest

import securefrl.registry as registry_mod
from protocols.plaintext import PlaintextProtocol
from securefrl.config import load_config
from securefrl.errors import ConfigError
from securefrl.protocol_factory import PROTOCOLS, make_protocol
from securefrl.registry import Registry


def test_register_get_names_and_did_you_mean() -> None:
    reg: Registry[type] = Registry("widget", "section.widget")
    reg.register("alpha", int, colour="red")

    @reg.register("beta")
    class Beta:
        pass

    assert reg.names() == ["alpha", "beta"] and "alpha" in reg and reg.get("beta") is Beta
    assert reg.meta("alpha") == {"colour": "red"}
    with pytest.raises(ConfigError, match=r"unknown widget 'alpah' \(did you mean 'alpha'\?\); known: alpha, beta") \
            as err:
        reg.get("alpah")
    assert err.value.field == "section.widget"
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("alpha", float)
    reg.register("alpha", float, replace=True)
    assert reg.get("alpha") is float


def test_lazy_entries_import_on_first_use_only() -> None:
    reg: Registry[type] = Registry("protocol", "protocol.name")
    reg.register("plain", "protocols.plaintext:PlaintextProtocol", note="lazy")
    entry = reg.entry("plain")
    assert isinstance(entry.target, str) and reg.meta("plain") == {"note": "lazy"}  # metadata without importing
    assert reg.get("plain") is PlaintextProtocol and entry.target is PlaintextProtocol


def test_entry_point_group_adds_single_plugins_and_whole_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange: two entry points of one group, as an installed package would declare them in pyproject.toml.
    eps = [EntryPoint("plain2", "protocols.plaintext:PlaintextProtocol", "test.group"),
           EntryPoint("more", "attacks.registry:REGISTRY", "test.group")]
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: [e for e in eps if e.group == group])
    reg: Registry[object] = Registry("thing", "thing", group="test.group")
    # Act / Assert: a single plug-in under its entry-point name, a registry contributing all its entries.
    assert reg.get("plain2") is PlaintextProtocol
    assert {"sign_flip", "reward_flip"} <= set(reg.names()) and reg.meta("reward_flip")["kind"] == "environment"
    assert reg.get("sign_flip")().name == "sign_flip"  # built through the registry's make(name, **params)


def test_attacks_come_through_the_installed_entry_point() -> None:
    from securefrl.behaviour import ATTACKS, attack_kind, make_behaviour

    assert {"sign_flip", "alie", "reward_flip", "backdoor"} <= set(ATTACKS.names())
    assert attack_kind("reward_flip") == "environment" and attack_kind("ipm") == "update"
    with pytest.raises(ConfigError, match="did you mean 'sign_flip'"):
        make_behaviour("sign_flp")


class _RevealingProtocol(PlaintextProtocol):
    """A new protocol under a new name that reveals individual updates, like plaintext."""

    name = "revealing"


class _SumOnlyProtocol(PlaintextProtocol):
    """A new protocol whose server can neither see updates nor open the aggregate (like CKKS)."""

    name = "sealed"
    reveals_individual_updates = False
    server_can_open = False


@pytest.fixture
def extra_protocols():  # type: ignore[no-untyped-def]
    PROTOCOLS.register("revealing", _RevealingProtocol)
    PROTOCOLS.register("sealed", _SumOnlyProtocol)
    yield
    PROTOCOLS.unregister("revealing")
    PROTOCOLS.unregister("sealed")


def test_rules_read_capabilities_not_protocol_names(extra_protocols: None) -> None:
    # A robust rule is accepted for any protocol that reveals updates (it was refused for names != plaintext) ...
    cfg = load_config(overrides=["protocol.name=revealing", "federation.aggregator=median"])
    assert cfg.make_rule() is not None
    assert isinstance(make_protocol("revealing", 4, 2), _RevealingProtocol)
    # ... and refused for one that hides them, whatever its name.
    with pytest.raises(ConfigError, match="reveals only the aggregate") as err:
        load_config(overrides=["protocol.name=sealed", "federation.aggregator=median"])
    assert err.value.field == "federation.aggregator"
    # Central DP needs a server that opens the sum: refused for any such protocol (it was allowed unless named ckks).
    with pytest.raises(ConfigError, match="cannot open the aggregate") as err:
        load_config(overrides=["protocol.name=sealed", "privacy.placement=central"])
    assert err.value.field == "privacy.placement"
    load_config(overrides=["protocol.name=sealed", "privacy.placement=local"])


def test_unknown_names_in_a_config_suggest_the_closest() -> None:
    for override, field, hint in (("protocol.name=secaggg", "protocol.name", "secagg"),
                                  ("agent.name=pp0", "agent.name", "ppo"),
                                  ("federation.server_optimizer=fedadamm", "federation.server_optimizer", "fedadam"),
                                  ("personalization.method=dito", "personalization.method", "ditto"),
                                  ("federation.aggregator=krumm", "federation.aggregator", "krum")):
        with pytest.raises(ConfigError, match=f"did you mean '{hint}'") as err:
            load_config(overrides=[override])
        assert err.value.field == field


def test_server_optimizer_registry_takes_a_new_rule() -> None:
    from securefrl.server_opt import SERVER_OPTIMIZERS, ServerOptimizer

    SERVER_OPTIMIZERS.register("signsgd", lambda opt, delta: np.sign(delta))
    try:
        step = ServerOptimizer("signsgd", lr=0.5).step(np.zeros(3, np.float32), np.array([2.0, -3.0, 0.0]))
        np.testing.assert_array_equal(step, [0.5, -0.5, 0.0])
        load_config(overrides=["federation.server_optimizer=signsgd"])
    finally:
        SERVER_OPTIMIZERS.unregister("signsgd")


def test_agents_declare_in_the_registry_what_their_class_implements() -> None:
    from securefrl.agents import AGENTS, agent_capabilities

    for name in AGENTS.names():
        cls = AGENTS.get(name)
        assert agent_capabilities(name) == cls.capabilities, name
        assert ("proximal" in cls.capabilities) == cls.supports_proximal, name
