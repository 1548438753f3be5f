"""``CKKSProtocol``: the CKKS roles behind the :class:`AggregationProtocol` interface."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from protocols.base import Aggregate, AggregationProtocol, OpenedAggregate
from protocols.ckks.params import CKKSParams
from protocols.ckks.roles import CKKSKeyDealer, CKKSKeyHolder, CKKSServer


class CKKSProtocol(AggregationProtocol):
    """Homomorphic-encryption aggregation, used by the round loop exactly like ``PlaintextProtocol``.

    A simulation harness owning the three roles: the :attr:`dealer` (run once; it can issue more
    key holders), the client-side :attr:`key_holder` and the :attr:`server`. Each call goes to
    its role — ``protect`` and ``open`` to the key holder, ``combine`` to the server. Give the
    server's code (and any curious-server attack) only :attr:`server`, which holds no secret key.
    All cryptographic randomness comes from SEAL and ``os.urandom``, so there is no seed argument.

    Parameters
    ----------
    dim:
        Length of the flat update vector.
    params:
        Ring/encoding parameters (default :class:`CKKSParams`: N=2048, one 54-bit prime, scale 2^36).
    """

    name = "ckks"
    reveals_individual_updates = False
    server_can_open = False

    def __init__(self, dim: int, params: CKKSParams | None = None) -> None:
        self.dealer = CKKSKeyDealer(params)
        self.params = self.dealer.params
        self.dim = dim
        self.server: CKKSServer = self.dealer.server(dim)
        self.key_holder: CKKSKeyHolder = self.dealer.key_holder(dim)

    @property
    def update_size(self) -> int:
        """Exact bytes of one client's payload (for wire-cost accounting)."""
        return self.server.shared.update_size

    def protect(self, client_id: int, round_id: int, update: np.ndarray, weight: float) -> bytes:
        return self.key_holder.protect(client_id, round_id, update, weight)

    def combine(self, round_id: int, payloads: Mapping[int, bytes]) -> Aggregate:
        return self.server.combine(round_id, payloads)

    def open(self, aggregate: Aggregate) -> OpenedAggregate:
        return self.key_holder.open(aggregate)
