"""CKKS parameters for addition-only aggregation with a flooded release, validated against the 128-bit table.

Aggregation only adds ciphertexts: no multiplication, no rescaling, no key switching. What sizes the
modulus is the *release*: the opened sum carries flooding (smudging) noise wide enough to hide the
encryption errors statistically (see :meth:`CKKSParams.flood_bound`), and the scale Delta must be large
enough that this noise still leaves the opened mean accurate. The default, two 54-bit primes at
N = 4096 (108 of the 109 bits the table allows) with Delta = 2^86, meets 40-bit statistical security
and a maximum error near 1e-6 on the mean of 100 clients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import tenseal.sealapi as seal

from protocols.ckks.ring import ERROR_BOUND
from protocols.errors import ProtocolConfigError

#: Largest total coefficient-modulus size (bits) that keeps 128-bit classical security for a
#: uniform ternary secret, per ring degree N. Homomorphic Encryption Security Standard
#: (Albrecht et al., HomomorphicEncryption.org, 2018), Table 1; SEAL enforces the same table.
MAX_MODULUS_BITS_128: dict[int, int] = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}

#: numpy's exact mulmod (float quotient estimate, wrapped uint64 remainder) holds for primes up to 56 bits.
_SEAL_MAX_PRIME_BITS = 56
_MIN_PRIME_BITS = 20
#: Uniform flooding noise is sampled exactly in int64; its half-width must stay below this.
MAX_FLOOD_BOUND = 2**62


@dataclass(frozen=True)
class CKKSParams:
    """CKKS ring and encoding parameters (Cheon, Kim, Kim and Song, ASIACRYPT 2017).

    Attributes
    ----------
    poly_modulus_degree:
        Ring degree N (a power of two in ``MAX_MODULUS_BITS_128``); each ciphertext packs N reals
        (N/2 complex slots, a real in the real part and another in the imaginary part).
    prime_bits:
        Bit sizes of the RNS primes q_1..q_L (SEAL picks primes = 1 mod 2N); their sum is at most the
        128-bit table entry for N. An int means one prime.
    scale_bits:
        log2 of the CKKS scale Delta. The error of an opened sum shrinks as 2^-scale_bits, the range of
        values it can hold shrinks as 2^(log2 Q - scale_bits).
    max_clients:
        Largest number of updates one aggregate may hold, and of partial decryptions one opening
        combines; with the per-client bound ``value_bound`` the sum provably never wraps modulo Q.
    flood_bits:
        Statistical security (bits) of the flooded release, per coefficient (see :meth:`flood_bound`).
    max_weight:
        Largest aggregation weight a client may declare (weights travel in the clear, signed; a payload
        outside (0, max_weight] is dropped by the server, and the total is at most n * max_weight).
    wire_bits:
        High-order bits of each c0 / partial-decryption coefficient that travel; the low
        ``log2 Q - wire_bits`` bits are dropped (as lattice KEMs compress ciphertexts), adding a public
        rounding error below 2^(dropped-1) per client, far below the flooding noise at the defaults.
    """

    poly_modulus_degree: int = 4096
    prime_bits: tuple[int, ...] | int = (54, 54)
    scale_bits: int = 86
    max_clients: int = 256
    flood_bits: int = 40
    wire_bits: int = 56
    max_weight: float = 100.0

    def __post_init__(self) -> None:
        bits = (self.prime_bits,) if isinstance(self.prime_bits, int) else tuple(int(b) for b in self.prime_bits)
        object.__setattr__(self, "prime_bits", bits)
        n = self.poly_modulus_degree
        if n not in MAX_MODULUS_BITS_128:
            raise ProtocolConfigError(f"poly_modulus_degree must be one of {sorted(MAX_MODULUS_BITS_128)}, got {n}")
        limit = MAX_MODULUS_BITS_128[n]
        if not bits or sum(bits) > limit:
            raise ProtocolConfigError(
                f"a {sum(bits)}-bit coefficient modulus with N={n} is below 128-bit security: the "
                f"HomomorphicEncryption.org standard allows at most {limit} bits for N={n} "
                f"(table: {MAX_MODULUS_BITS_128})"
            )
        if not all(_MIN_PRIME_BITS <= b <= _SEAL_MAX_PRIME_BITS for b in bits):
            raise ProtocolConfigError(
                f"every prime must have [{_MIN_PRIME_BITS}, {_SEAL_MAX_PRIME_BITS}] bits, got {bits}"
            )
        if self.max_clients < 1:
            raise ProtocolConfigError(f"max_clients must be at least 1, got {self.max_clients}")
        if not 8 <= self.wire_bits <= 63:
            raise ProtocolConfigError(f"wire_bits must be in [8, 63], got {self.wire_bits}")
        if not 0 < self.max_weight < math.inf:
            raise ProtocolConfigError(f"max_weight must be positive and finite, got {self.max_weight}")
        if self.flood_bits < 0:
            raise ProtocolConfigError(f"flood_bits must be non-negative, got {self.flood_bits}")
        if self.scale_bits < 1 or self.value_bound < 1.0:
            top = math.floor(sum(bits) - 1 - math.log2(math.sqrt(2) * self.max_clients))
            raise ProtocolConfigError(
                f"scale_bits={self.scale_bits} leaves no room for the sum of {self.max_clients} clients of "
                f"values up to 1 in a {sum(bits)}-bit modulus; need 1 <= scale_bits <= about {top}"
            )

    @property
    def scale(self) -> float:
        """The CKKS scale Delta = 2^scale_bits."""
        return float(2**self.scale_bits)

    @cached_property
    def primes(self) -> tuple[int, ...]:
        """The RNS primes (deterministic: SEAL picks the largest primes of those sizes with q = 1 mod 2N)."""
        try:
            mods = seal.CoeffModulus.Create(self.poly_modulus_degree, list(self.prime_bits))
        except (ValueError, RuntimeError) as err:
            raise ProtocolConfigError(f"SEAL cannot create primes {self.prime_bits} for N: {err}") from err
        return tuple(int(m.value()) for m in mods)

    @property
    def modulus(self) -> int:
        """Q = q_1 * ... * q_L."""
        return math.prod(self.primes)

    @property
    def prime_bytes(self) -> tuple[int, ...]:
        """Wire bytes per residue, per prime: only as many as each prime needs."""
        return tuple((b + 7) // 8 for b in self.prime_bits)

    @property
    def coeff_bytes(self) -> int:
        """Bytes per ciphertext coefficient on the wire (all residues)."""
        return sum(self.prime_bytes)

    @property
    def drop_bits(self) -> int:
        """Low-order bits of each transmitted coefficient that are dropped."""
        return max(0, self.modulus.bit_length() - self.wire_bits)

    @property
    def wire_coeff_bytes(self) -> int:
        """Bytes per transmitted c0 / partial coefficient."""
        return (min(self.wire_bits, self.modulus.bit_length()) + 7) // 8

    @property
    def reals_per_ciphertext(self) -> int:
        """Reals one ciphertext packs: N/2 complex slots, two reals each."""
        return self.poly_modulus_degree

    def ciphertexts_for(self, dim: int) -> int:
        return -(-dim // self.reals_per_ciphertext)

    def flood_bound(self, n_included: int, n_decryptors: int) -> int:
        """Half-width B of the uniform flooding noise each decryptor adds to each coefficient.

        What a release could leak beyond the sum is the sum E of the included clients' encryption
        errors (|E| <= n_included * 19 per coefficient; it depends on the secret keys, and an exact
        M + E is what the key-recovery attack needs). Every honest partial decryption the adversary
        sees shows it E + F_i with F_i uniform on [-B, B]; by the smudging lemma (Asharov et al.,
        EUROCRYPT 2012, threshold FHE) each is within statistical distance |E| / (2B + 1) of F_i alone.
        An honest client gives one partial per round, so the adversary (server plus colluders, who can
        re-use their own partials with several decryptor sets) sees at most ``n_decryptors`` = the
        number of enrolled clients of them: together within n_decryptors * |E| / (2B + 1) <=
        2^-flood_bits of a view that does not depend on E at all, per coefficient and round. Hence
        B = 2^flood_bits * n_included * 19 * n_decryptors / 2. (Over all coefficients of a round
        the union bound adds log2(N * ciphertexts) bits of loss; the figure is stated per coefficient.)
        """
        return math.ceil(2.0**self.flood_bits * max(1, n_included) * ERROR_BOUND * max(1, n_decryptors) / 2)

    @property
    def max_noise(self) -> float:
        """Largest |noise| a coefficient of an opened sum can carry (errors, flooding, encoding rounding)."""
        k = self.max_clients
        flood = k * self.flood_bound(k, k) if self.flood_bits > 0 else 0
        rounding = 2.0 ** max(0, self.scale_bits - 40) + 2.0 ** self.drop_bits  # encoding, dropped c0/partial bits
        return k * (ERROR_BOUND + 2 * rounding) + flood

    @property
    def value_bound(self) -> float:
        """Largest |weight * update| entry one client may send.

        A CKKS plaintext coefficient is at most sqrt(2) times the largest slot entry, so if each of
        ``max_clients`` clients stays within this bound, sum plus noise stays below Q/2 and opens.
        """
        room = self.modulus / 2 - self.max_noise
        return 0.99 * room / (math.sqrt(2) * self.scale * self.max_clients)

    def check_flooding(self) -> None:
        """Refuse parameters whose flooding noise cannot be sampled or would not fit the modulus."""
        bound = self.flood_bound(self.max_clients, self.max_clients)
        if bound >= MAX_FLOOD_BOUND or self.max_noise >= self.modulus / 4:
            raise ProtocolConfigError(
                f"{self.flood_bits}-bit flooding for max_clients={self.max_clients} needs noise of width "
                f"2^{math.log2(bound):.1f}, too large for a {sum(self.prime_bits)}-bit modulus; lower "
                "max_clients or use a larger ring"
            )

    def seal_context(self) -> seal.SEALContext:
        """Build SEAL's context for these parameters: SEAL re-checks the 128-bit table itself."""
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(self.poly_modulus_degree)
        parms.set_coeff_modulus(seal.CoeffModulus.Create(self.poly_modulus_degree, list(self.prime_bits)))
        ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        if not ctx.parameters_set():
            raise ProtocolConfigError(f"SEAL refused the parameters: {ctx.parameters_error_message()}")
        return ctx
