"""CKKS secure aggregation that no single party can open: threshold keys, a flooded release, refusals.

Construction (default ``keys="threshold"``)
-------------------------------------------
Ring R_Q = Z_Q[X]/(X^N + 1), N = 4096, Q = q_1 q_2 (two 54-bit primes, 108 of the 109 bits the
HomomorphicEncryption.org table allows for 128-bit security), CKKS encoding (Cheon, Kim, Kim and Song,
ASIACRYPT 2017) of N reals per ciphertext at scale 2^86. It is the threshold-RLWE pattern of Asharov,
Jain, Lopez-Alt, Tromer, Vaikuntanathan and Wichs ("Multiparty Computation with Low Communication,
Computation and Interaction via Threshold FHE", EUROCRYPT 2012) and of multiparty HE (Mouchet,
Troncoso-Pastoriza, Bossuat and Hubaux, "Multiparty Homomorphic Encryption from Ring-Learning-With-
Errors", PETS 2021), in the single-server aggregation setting of Flamingo (Ma, Woods, Bonneau, Raykova
and Tyagi, IEEE S&P 2023):

1. *Enrolment.* Client j draws its own ternary secret s_j and Shamir-shares it t-of-n (default
   t = n//2 + 1) coefficient-wise over each prime q_i to every enrolled client, encrypted on the
   pairwise channel X25519 -> HKDF -> AES-256-GCM of :mod:`protocols.crypto`, the X25519 keys signed
   with the clients' Ed25519 identity keys (so the relaying server cannot substitute them).
2. *Encryption.* For round r and ciphertext k a common polynomial a_{r,k} is expanded from a public
   seed that every client derives itself from all clients' signed enrolment contributions (so the
   server cannot pick the a's), fresh every round: the same a and s_j twice would leak m - m'. Client j sends only
   c0_j = -a_{r,k} s_j + Delta m_j + e_j (e_j rounded Gaussian, sigma 3.2, as SEAL), high 56 bits of
   each coefficient (7 bytes; the low 52 are dropped, far below the flooding), with its public weight,
   signed. It encrypts at most once per round.
3. *Sum.* The server adds the c0's modulo each prime, dropping bad payloads one by one.
4. *Opening.* Every included client signs "I was summed into exactly this set I" (once per round);
   t decryptors each check the signatures, that |I| >= ``min_clients`` (default 2) distinct enrolled
   clients of the current round, and that they have not decrypted this round, then return
   lambda_i * a_{r,k} * sum_{j in I} share_j(i) + F_i, with the Lagrange weight lambda_i of the
   decryptor set exact modulo each q_i and F_i uniform flooding noise on [-B, B] added per partial,
   B = 2^40 * |I| * 19 * n_enrolled / 2 (40-bit statistical security per coefficient, see
   :meth:`CKKSParams.flood_bound`). The server adds the partials to its sum, decodes, divides by the
   total weight and rounds to float32: that is all it ever sees of the opened values.

Fewer than t decryptors (or a partial that does not verify) abort the round and release nothing.

Threat model
------------
Covered: an honest-but-curious server together with up to t-1 colluding clients learns nothing about
an honest client's update beyond the flooded, float32 sums of sets of at least ``min_clients``
clients that it is allowed to open (at most one set per honest member per round). RLWE hides each c0
and each partial (a partial is an RLWE sample with the flooding as error); Shamir hides a key from
t-1 shares; the smudging lemma hides the key-dependent error sum in every release. The server cannot
get one client's ciphertext opened: a set of one is refused, a set must be confirmed by each member,
a stale or re-tagged aggregate meets a fresh a_{r,k} and decrypts to noise. Attack plug-ins
``ckks_key_recovery`` and ``ckks_single_open`` (:mod:`attacks.protocol.ckks`) show both attacks
succeeding on the old release and failing on these defaults.

Not covered: a malicious server that forges the identity roster (a PKI for the Ed25519 identity
keys is assumed) or Sybil clients; a colluding group of ``min_clients - 1`` clients learns the rest of
a sum they are in (inherent to aggregation: raise ``min_clients``); t or more colluding clients open
everything; clients that encrypt garbage or huge values (poisoning: no range proof), or return wrong
partials (the round aborts or opens garbage, detected only by the signature and length checks); the
union of the per-coefficient 2^-40 statistical distance over all coefficients and rounds (add
log2(coefficients x rounds) bits to flood_bits for a bound per experiment); side channels.

IND-CPA-D (correction)
----------------------
CKKS decryption returns m + e, and e depends on the secret key: whoever sees an exact decryption of a
ciphertext it knows can solve for the key (Li and Micciancio, EUROCRYPT 2021). The earlier docstring
claimed the clients' DP noise inside the sum mitigates this; it does not -- the attacker never needs
m, only c0 and the decrypted m + e, so noise inside the plaintext is irrelevant (the
``ckks_key_recovery`` plug-in recovers every update to ~6e-9 whatever the updates contain, DP noise
included). What helps is noise added to the *decryption*, wide enough to hide e statistically
(flooding, as here; Li, Micciancio, Schultz and Sorrell, CRYPTO 2022 study the exact width needed),
and never releasing the exact decryption.

Other modes (explicit, labelled)
--------------------------------
``keys="shared"``: one secret key held by every client (the NVFlare-style deployment, for comparison).
The release is still safe -- the opener re-verifies every included client's signed payload, sums them
itself, refuses fewer than ``min_clients``, floods and returns float32 -- but the server plus ANY ONE
client decrypts every update. ``release="exact-unsafe"`` (only with shared keys) reproduces the old
broken release for the attack tests. ``seed=...`` makes keys and noise reproducible from a seeded
ChaCha20 stream: for experiments only, flagged in :attr:`CKKSProtocol.label`.
"""

from protocols.ckks.errors import (
    CiphertextFormatError,
    CoefficientRangeError,
    KeyRoleError,
    UpdateRangeError,
)
from protocols.ckks.params import MAX_MODULUS_BITS_128, CKKSParams
from protocols.ckks.protocol import CKKSProtocol
from protocols.ckks.roles import CKKSClient, CKKSServer, RefusedError

__all__ = [
    "MAX_MODULUS_BITS_128",
    "CKKSClient",
    "CKKSParams",
    "CKKSProtocol",
    "CKKSServer",
    "CiphertextFormatError",
    "CoefficientRangeError",
    "KeyRoleError",
    "RefusedError",
    "UpdateRangeError",
]
