"""Vertical federated reinforcement learning (VFRL): parties observe disjoint parts of one environment.

Each party encodes its own slice of the observation; a designated Q-network agent combines the
encrypted (optionally clipped and noised) embeddings, learns the Q-function by DQN TD learning, holds
the reward and returns embedding gradients to the parties (FedRL, Zhuo et al. 2019; vertical FL, Liu et
al. 2019; survey: Qi et al. 2021). No party's raw observation crosses the wire: see
:mod:`securefrl.vertical.parties` for who holds what, :mod:`securefrl.vertical.channel` for the
X25519 + HKDF + AES-GCM channels, and :mod:`securefrl.vertical.audit` for the checks.

Entry points: :func:`run_vfrl`, :func:`run_partial_view_baseline`, :func:`run_full_observation_baseline`.
"""

from securefrl.vertical.audit import Leak, find_in_messages, find_in_object, observation_signatures
from securefrl.vertical.channel import (
    AuthenticationError,
    ChannelEnd,
    KeyAgreementError,
    Kind,
    MalformedMessageError,
    ReplayError,
    UnexpectedMessageError,
    VerticalProtocolError,
    decode_arrays,
    encode_arrays,
)
from securefrl.vertical.config import VFRLConfig, check_partition
from securefrl.vertical.parties import EncoderParty, QAgent, VerticalEnvironment
from securefrl.vertical.runner import (
    ObservationFilter,
    VFRLResult,
    VFRLSystem,
    eval_seed,
    run_full_observation_baseline,
    run_partial_view_baseline,
    run_vfrl,
)
from securefrl.vertical.wire import MessageLog, Wire, WireRecord

__all__ = [
    "AuthenticationError",
    "ChannelEnd",
    "EncoderParty",
    "KeyAgreementError",
    "Kind",
    "Leak",
    "MalformedMessageError",
    "MessageLog",
    "ObservationFilter",
    "QAgent",
    "ReplayError",
    "UnexpectedMessageError",
    "VFRLConfig",
    "VFRLResult",
    "VFRLSystem",
    "VerticalEnvironment",
    "VerticalProtocolError",
    "Wire",
    "WireRecord",
    "check_partition",
    "decode_arrays",
    "encode_arrays",
    "eval_seed",
    "find_in_messages",
    "find_in_object",
    "observation_signatures",
    "run_full_observation_baseline",
    "run_partial_view_baseline",
    "run_vfrl",
]
