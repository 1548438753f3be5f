"""In-process transport between VFRL nodes, with a record of every message that crosses it.

Nodes (parties, the Q-network agent, the environment) never hold references to one another: they
produce and consume bytes, and the :class:`Wire` carries them. That makes the wire the single place
where "what leaves a party" can be observed, which is the test hook the privacy claims are checked
against: a :class:`MessageLog` can keep every message's bytes (and, for audits, the plaintext the
sender encrypted) so a test can search them for raw observation values.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WireRecord:
    """One message as it crossed the wire."""

    sender: str
    """Node name: ``"q"``, ``"env"`` or ``"party<i>"``."""
    recipient: str
    """Node name of the receiver."""
    kind: str
    """Message kind name (see :class:`~securefrl.vertical.channel.Kind`)."""
    step: int
    """Step or update index the message is bound to."""
    data: bytes
    """The exact bytes on the wire (header + ciphertext, or header + clear body)."""
    plaintext: bytes | None = None
    """What the sender encrypted (audit only; None for clear messages or when not kept)."""


@dataclass
class MessageLog:
    """Counts and (optionally) copies of every message.

    ``keep_bytes`` keeps each message; ``keep_plaintext`` also keeps what senders encrypted, which lets
    an audit check the content the Q-network agent could read. Both grow with the run: for tests.
    """

    keep_bytes: bool = False
    keep_plaintext: bool = False
    records: list[WireRecord] = field(default_factory=list)
    counts: dict[str, list[int]] = field(default_factory=dict)

    def add(self, record: WireRecord) -> None:
        """Count the message and keep it (and its plaintext) if the log is configured to."""
        key = f"{record.sender}->{record.recipient}:{record.kind}"
        entry = self.counts.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += len(record.data)
        if self.keep_bytes:
            self.records.append(record if self.keep_plaintext else
                                WireRecord(record.sender, record.recipient, record.kind, record.step, record.data))

    def summary(self) -> dict[str, dict[str, int]]:
        """``{"sender->recipient:KIND": {"messages": n, "bytes": b}}``, sorted by key."""
        return {k: {"messages": v[0], "bytes": v[1]} for k, v in sorted(self.counts.items())}

    def total_bytes(self) -> int:
        """Bytes of every message so far, headers included."""
        return sum(v[1] for v in self.counts.values())


class Wire:
    """Carries bytes from one node to another and records them in a :class:`MessageLog`."""

    def __init__(self, log: MessageLog | None = None) -> None:
        self.log = log if log is not None else MessageLog()

    def send(self, sender: str, recipient: str, kind: str, step: int, data: bytes,
             plaintext: bytes | None = None) -> bytes:
        """Record the message and hand back the bytes the recipient receives (an immutable copy)."""
        delivered = bytes(data)
        self.log.add(WireRecord(sender, recipient, kind, step, delivered,
                                plaintext if self.log.keep_plaintext else None))
        return delivered
