"""CKKS homomorphic-encryption secure aggregation (real SEAL ciphertexts through TenSEAL's ``sealapi``).

Roles and trust
---------------
A key dealer creates one CKKS secret key s (Cheon, Kim, Kim and Song, "Homomorphic Encryption
for Arithmetic of Approximate Numbers", ASIACRYPT 2017) and gives it to the clients
(:class:`CKKSKeyHolder`). The server (:class:`CKKSServer`) gets only public parameters, a key
fingerprint and an integrity key: it adds ciphertexts and cannot decrypt. A key holder (any
client) opens the aggregate. Secure against an honest-but-curious server that does not
collude with a client; a client colluding with the server can decrypt everyone's updates,
as in every single-key HE aggregation scheme.

Encryption and packing
----------------------
Clients pre-scale their update by their weight and put the weight itself in the spare slot
after it, so the server never learns weights either; the opener divides the decrypted sum by
the decrypted total weight. Each ciphertext packs N reals (N/2 complex slots, real and
imaginary parts), vectors of any length use ceil((dim+1)/N) ciphertexts. Encryption is SEAL's
seeded symmetric-key encryption: c = (c0, a) with c0 = -a*s + e + m mod q and a expanded from
a 64-byte public seed, so only c0 (ceil(log2 q / 8) bytes per coefficient) and the seed travel.
The server adds the c0's modulo q in numpy and forwards the seeds; the key holder expands the
a's through SEAL, adds them and decrypts. Decryption is linear, so this equals the SEAL sum of
the full ciphertexts; the server sees exactly what full ciphertexts would show it (a is a
public function of the seed).

Parameters
----------
:class:`CKKSParams` is validated against the HomomorphicEncryption.org 128-bit table (total
modulus bits at most 27/54/109/218/438/881 for N = 1024...32768); anything weaker is refused
with :class:`~protocols.errors.ProtocolConfigError`. Addition needs no rescaling, so the
default is the smallest secure ring with one prime: N=2048, a 54-bit q, scale 2^36.

Rejecting bad payloads
----------------------
Size limits are checked before parsing (exact expected length). Then, each with its own
:class:`~protocols.errors.PayloadError` subclass: envelope defects, wrong round/sender
(replay), wrong length, a foreign key fingerprint (:class:`KeyMismatchError`: a ciphertext
made under another secret key would otherwise add garbage silently), a failed GMAC tag
(:class:`IntegrityError`), unknown PRNG type, coefficients >= q (:class:`CoefficientRangeError`).
CKKS has no integrity of its own: without the tag a flipped bit in c0 changes the decrypted
sum silently unless it pushes a coefficient above q (the range check alone catches a flip
only in the spare top bits of a coefficient). The GMAC, keyed with a dealer-issued key held by
clients, server and opener, catches every modification by anyone without that key (network,
storage, a third party); it does not stop an insider (a client or the server itself) from
sending a well-formed encryption of a bad value — that is poisoning, and a robust rule cannot
run on encrypted updates.

The IND-CPA-D caveat
--------------------
CKKS decryption returns m + e, not m, and the noise e depends on the secret key. Li and
Micciancio ("On the Security of Homomorphic Encryption on Approximate Numbers", EUROCRYPT
2021) show that an adversary who sees decryptions of ciphertexts whose plaintexts it knows
can recover the key (IND-CPA-D). The server knows the aggregate ciphertext and usually sees
the opened mean (it becomes the next global model), so decrypted aggregates should leave the
key holder only with differential-privacy noise added — the clients' DP noise inside the
sum, or noise the key holder adds before release (Li, Micciancio, Schultz and Sorrell,
CRYPTO 2022, show that DP noise on decryptions restores security) — and never as exact
decryptions of plaintexts the server could know (e.g. aggregates of fixed test updates).
"""

from protocols.ckks.errors import (
    CiphertextFormatError,
    CoefficientRangeError,
    IntegrityError,
    KeyMismatchError,
    KeyRoleError,
    UpdateRangeError,
)
from protocols.ckks.params import MAX_MODULUS_BITS_128, CKKSParams
from protocols.ckks.protocol import CKKSProtocol
from protocols.ckks.roles import CKKSKeyDealer, CKKSKeyHolder, CKKSServer

__all__ = [
    "MAX_MODULUS_BITS_128",
    "CKKSKeyDealer",
    "CKKSKeyHolder",
    "CKKSParams",
    "CKKSProtocol",
    "CKKSServer",
    "CiphertextFormatError",
    "CoefficientRangeError",
    "IntegrityError",
    "KeyMismatchError",
    "KeyRoleError",
    "UpdateRangeError",
]
