"""Threat-model types shared by the attacks.

As in breaching, the threat model (who acts, what they see, what they control) is stated apart from
the attack's mechanics, so that an evaluation reports what an adversary was allowed to do next to
what it achieved.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from securefrl.errors import SecureFRLError

__all__ = ["AttackError", "Knowledge", "ThreatModel"]


class AttackError(SecureFRLError, ValueError):
    """An attack was handed input it cannot work with (wrong shapes, non-finite values, missing knowledge)."""


class Knowledge(Enum):
    """What a poisoning adversary observes in a round besides its own data.

    The levels follow Shejwalkar and Houmansadr (NDSS 2021): with *partial* knowledge the colluding
    malicious clients only see the honest updates they themselves computed; *omniscient* (their
    "full knowledge") adversaries also see every honest client's update of the round.
    """

    OWN = "own"  # only each malicious client's own update (no collusion statistics needed)
    PARTIAL = "partial"  # the colluding malicious clients' own honest updates, pooled
    OMNISCIENT = "omniscient"  # additionally the honest clients' updates of the round


@dataclass(frozen=True)
class ThreatModel:
    """Who acts, what they see, what they control."""

    actors: str
    knowledge: Knowledge
    controls: str

    def describe(self) -> str:
        """One line for logs and result files."""
        return f"actors: {self.actors}; sees: {self.knowledge.value}; controls: {self.controls}"
