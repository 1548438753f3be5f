"""DP and personalization rules read a protocol's declared capabilities, never its name.

A third-party protocol that hides individual updates and cannot be opened by the server must get what
CKKS gets (secure noise by default, central DP refused); one that declares a coordinate clip must get
what SecAgg gets (room for the noise, the count coordinate checked) — without being named either.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from protocols.plaintext import PlaintextProtocol
from securefrl.config import PrivacySection, load_config
from securefrl.errors import ConfigError
from securefrl.personalization.checks import check_personalization
from securefrl.privacy.federated import ClientLevelDP
from securefrl.protocol_factory import PROTOCOLS


class HidingProtocol(PlaintextProtocol):
    """Plaintext arithmetic declared as hiding updates from a server that cannot open (like CKKS)."""

    name = "hiding-test"
    reveals_individual_updates = False
    server_can_open = False


class ClippingProtocol(PlaintextProtocol):
    """Plaintext arithmetic declared with a per-coordinate clip parameter (like SecAgg's ``clip``)."""

    name = "clipping-test"
    reveals_individual_updates = False
    coordinate_clip_param = "bound"

    def __init__(self, dim: int, bound: float = 1.0) -> None:
        super().__init__(dim)
        self.mean_bound = float(bound)


@pytest.fixture
def extra_protocols() -> Iterator[None]:
    PROTOCOLS.register(HidingProtocol.name, HidingProtocol)
    PROTOCOLS.register(ClippingProtocol.name, ClippingProtocol)
    yield
    PROTOCOLS.unregister(HidingProtocol.name)
    PROTOCOLS.unregister(ClippingProtocol.name)


def _section(placement: str) -> PrivacySection:
    return PrivacySection(placement=placement, noise_multiplier=1.0, clip_norm=1.0)


@pytest.mark.usefixtures("extra_protocols")
def test_central_dp_is_refused_for_any_protocol_the_server_cannot_open() -> None:
    with pytest.raises(ConfigError, match="central noise needs a trusted aggregator"):
        ClientLevelDP(_section("central"), HidingProtocol.name, 4, 4, rounds=2)
    ClientLevelDP(_section("central"), ClippingProtocol.name, 4, 4, rounds=2)  # the server opens: allowed


@pytest.mark.usefixtures("extra_protocols")
def test_noise_is_secure_by_default_under_any_protocol() -> None:
    # The server holds the config's seed under every protocol: seeded noise needs the experiment flag everywhere.
    for name in (HidingProtocol.name, ClippingProtocol.name, "plaintext"):
        assert ClientLevelDP(_section("distributed"), name, 4, 4, rounds=2).secure
        flagged = replace(_section("distributed"), seeded_noise_experiment=True)
        assert not ClientLevelDP(flagged, name, 4, 4, rounds=2).secure  # seeded, labelled


@pytest.mark.usefixtures("extra_protocols")
def test_count_coordinate_check_uses_the_declared_clip_parameter() -> None:
    overrides = ["personalization.method=ifca", "personalization.n_clusters=2",
                 f"protocol.name={ClippingProtocol.name}"]
    with pytest.raises(ConfigError, match=r"protocol\.params\.bound"):
        load_config(None, [*overrides, "protocol.params.bound=0.5"])
    check_personalization(load_config(None, [*overrides, "protocol.params.bound=1.0"]))


@pytest.mark.usefixtures("extra_protocols")
def test_federation_leaves_room_for_the_noise_in_the_declared_clip() -> None:
    from securefrl.federation import Federation

    cfg = load_config(None, [f"protocol.name={ClippingProtocol.name}", "privacy.placement=distributed",
                             "privacy.noise_multiplier=1.0", "privacy.clip_norm=1.0", "federation.n_clients=2",
                             "federation.rounds=1", "federation.local_steps=32", "federation.eval_episodes=1"])
    fed = Federation(cfg)
    assert fed.dp is not None
    assert fed.protocol.mean_bound == pytest.approx(fed.dp.required_coordinate_clip())


@pytest.mark.parametrize("clip", [1e-6, 100.0])
def test_secagg_coordinate_clipping_is_recorded_and_warned_not_silent(clip: float) -> None:
    import warnings

    from securefrl.errors import CoordinateClipWarning
    from securefrl.federation import Federation

    cfg = load_config(None, ["protocol.name=secagg", f"protocol.params.clip={clip}", "federation.n_clients=2",
                             "federation.rounds=1", "federation.local_steps=32", "federation.eval_episodes=1"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = Federation(cfg).run_round()
    clipped = [w for w in caught if issubclass(w.category, CoordinateClipWarning)]
    counts = [row.get("clipped_coordinates", 0) for row in record.clients]
    if clip < 1:  # every trained coordinate is beyond +-1e-6: the opened mean is not the mean of the updates
        assert len(clipped) == 1 and "protocol.params.clip" in str(clipped[0].message)
        assert all(n > 0 for n in counts)
    else:
        assert not clipped and counts == [0, 0]
