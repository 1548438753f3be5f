"""CKKS parameters for addition-only aggregation, validated against the 128-bit HE security table.

Aggregation only adds ciphertexts: no multiplication, no rescaling, no key switching. One
coefficient-modulus prime is therefore enough, and the smallest ring that keeps 128-bit
security for that prime keeps ciphertexts small and encryption fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import tenseal.sealapi as seal

from protocols.errors import ProtocolConfigError

#: Largest total coefficient-modulus size (bits) that keeps 128-bit classical security for a
#: uniform ternary secret, per ring degree N. Homomorphic Encryption Security Standard
#: (Albrecht et al., HomomorphicEncryption.org, 2018), Table 1; SEAL enforces the same table.
MAX_MODULUS_BITS_128: dict[int, int] = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}

#: SEAL refuses coefficient-modulus primes wider than 60 bits.
_SEAL_MAX_PRIME_BITS = 60
#: Below this the prime leaves no room for a useful scale; SEAL's own minimum for NTT primes is near here.
_MIN_PRIME_BITS = 20


@dataclass(frozen=True)
class CKKSParams:
    """CKKS ring and encoding parameters (Cheon, Kim, Kim and Song, ASIACRYPT 2017).

    Defaults (N=2048, one 54-bit prime, scale 2^36) are the smallest 128-bit-secure ring that
    meets the aggregation targets: 2N = 4096 reals per ciphertext with complex packing, 7 bytes
    per coefficient on the wire, and a maximum error near 1e-7 on the sum of 100 updates.

    Attributes
    ----------
    poly_modulus_degree:
        Ring degree N (a power of two in ``MAX_MODULUS_BITS_128``); each ciphertext packs N reals
        (N/2 complex slots, a real in the real part and another in the imaginary part).
    prime_bits:
        Bit size of the single coefficient-modulus prime q; at most the 128-bit table entry for N.
    scale_bits:
        log2 of the CKKS scale Delta. The error of an opened sum shrinks as 2^-scale_bits, the range
        of values it can hold shrinks as 2^(prime_bits - scale_bits).
    max_clients:
        Largest number of updates one aggregate may hold. With the per-client bound
        ``value_bound`` the sum provably never wraps around modulo q.
    """

    poly_modulus_degree: int = 2048
    prime_bits: int = 54
    scale_bits: int = 36
    max_clients: int = 1024

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in MAX_MODULUS_BITS_128:
            raise ProtocolConfigError(f"poly_modulus_degree must be one of {sorted(MAX_MODULUS_BITS_128)}, got {n}")
        limit = MAX_MODULUS_BITS_128[n]
        if self.prime_bits > limit:
            raise ProtocolConfigError(
                f"a {self.prime_bits}-bit coefficient modulus with N={n} is below 128-bit security: the "
                f"HomomorphicEncryption.org standard allows at most {limit} bits for N={n} "
                f"(table: {MAX_MODULUS_BITS_128})"
            )
        if not _MIN_PRIME_BITS <= self.prime_bits <= _SEAL_MAX_PRIME_BITS:
            raise ProtocolConfigError(
                f"prime_bits must be in [{_MIN_PRIME_BITS}, {_SEAL_MAX_PRIME_BITS}] (one SEAL prime), "
                f"got {self.prime_bits}"
            )
        if self.max_clients < 1:
            raise ProtocolConfigError(f"max_clients must be at least 1, got {self.max_clients}")
        # Headroom: q/2 must exceed sqrt(2) * Delta * max_clients * value_bound with value_bound >= 1.
        headroom = self.prime_bits - 1 - self.scale_bits - math.log2(math.sqrt(2) * self.max_clients)
        if self.scale_bits < 1 or headroom < 0:
            raise ProtocolConfigError(
                f"scale_bits={self.scale_bits} leaves no room for the sum of {self.max_clients} clients in a "
                f"{self.prime_bits}-bit prime; need 1 <= scale_bits <= "
                f"{math.floor(self.prime_bits - 1 - math.log2(math.sqrt(2) * self.max_clients))}"
            )

    @property
    def scale(self) -> float:
        """The CKKS scale Delta = 2^scale_bits."""
        return float(2**self.scale_bits)

    @property
    def coeff_bytes(self) -> int:
        """Bytes per ciphertext coefficient on the wire: only as many as the prime needs."""
        return (self.prime_bits + 7) // 8

    @property
    def reals_per_ciphertext(self) -> int:
        """Reals one ciphertext packs: N/2 complex slots, two reals each."""
        return self.poly_modulus_degree

    @cached_property
    def modulus(self) -> int:
        """The prime q (deterministic: SEAL picks the largest prime of that size with q = 1 mod 2N)."""
        return int(seal.CoeffModulus.Create(self.poly_modulus_degree, [self.prime_bits])[0].value())

    @property
    def value_bound(self) -> float:
        """Largest |weight * update| entry (and weight) one client may send.

        A CKKS plaintext coefficient is at most sqrt(2) times the largest slot entry, so if each of
        ``max_clients`` clients stays within this bound the encrypted sum stays below q/2 and opens
        correctly (the 1% margin covers the encryption noise).
        """
        return 0.99 * (self.modulus / 2) / (math.sqrt(2) * self.scale * self.max_clients)

    def ciphertexts_for(self, dim: int) -> int:
        """Ciphertexts needed for ``dim`` values plus the spare slot carrying the weight."""
        return -(-(dim + 1) // self.reals_per_ciphertext)

    def seal_context(self) -> seal.SEALContext:
        """Build the public SEAL context; SEAL re-checks the 128-bit table itself."""
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(self.poly_modulus_degree)
        try:
            parms.set_coeff_modulus(seal.CoeffModulus.Create(self.poly_modulus_degree, [self.prime_bits]))
        except ValueError as err:
            raise ProtocolConfigError(f"SEAL cannot create a {self.prime_bits}-bit prime for N: {err}") from err
        ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        if not ctx.parameters_set():
            raise ProtocolConfigError(f"SEAL refused the parameters: {ctx.parameters_error_message()}")
        return ctx
