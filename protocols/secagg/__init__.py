"""SecAgg+ pairwise-masking secure aggregation (Bonawitz et al. 2017; Bell et al. 2020, both CCS).

:class:`SecAggProtocol` plugs into the round loop; :class:`SecAggClient` and :class:`SecAggServer`
are the stage machines it drives, usable directly to study dropouts or adversarial servers. By default
the protocol is the malicious-server variant: clients enrolled with :func:`enrol` (an
:class:`IdentityRegistry` of Ed25519 keys) sign every message, check every key, run the consistency
check, and commit to their self-mask seeds (see the attacks in :mod:`attacks.protocol.secagg`).
"""

from protocols.crypto import AuthenticationError, KeyAgreementError, SignatureError
from protocols.secagg.client import DoubleRevealError, SecAggClient
from protocols.secagg.identity import IdentityRegistry, enrol
from protocols.secagg.messages import Kind, MessageCodec, MessageFormatError, ShareKind, Stage
from protocols.secagg.params import (
    RoundPlan,
    SecAggParams,
    logarithmic_degree,
    neighbour_graph,
    secagg_plus_parameters,
)
from protocols.secagg.protocol import SecAggProtocol
from protocols.secagg.quantize import Quantizer
from protocols.secagg.server import SecAggResult, SecAggServer

__all__ = [
    "AuthenticationError",
    "DoubleRevealError",
    "IdentityRegistry",
    "KeyAgreementError",
    "Kind",
    "MessageCodec",
    "MessageFormatError",
    "Quantizer",
    "RoundPlan",
    "SecAggClient",
    "SecAggParams",
    "SecAggProtocol",
    "SecAggResult",
    "SecAggServer",
    "ShareKind",
    "SignatureError",
    "Stage",
    "enrol",
    "logarithmic_degree",
    "neighbour_graph",
    "secagg_plus_parameters",
]
