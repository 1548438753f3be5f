"""Shamir t-of-n sharing: every t-subset reconstructs, t-1 shares carry no information."""

import itertools
import os

import pytest

from protocols import shamir
from protocols.shamir import PRIME, InsufficientSharesError, ShareFormatError


@pytest.mark.parametrize(("n", "t"), [(5, 1), (5, 3), (6, 4), (6, 6)])
def test_every_subset_of_at_least_t_reconstructs_and_smaller_ones_are_refused(n, t):
    secret = int.from_bytes(os.urandom(32), "big")
    shares = shamir.split(secret, t, list(range(1, n + 1)))
    for size in range(1, n + 1):
        for subset in itertools.combinations(shares, size):
            offered = {x: shares[x] for x in subset}
            if size >= t:
                assert shamir.reconstruct(offered, t) == secret
            else:
                with pytest.raises(InsufficientSharesError):
                    shamir.reconstruct(offered, t)


def test_t_minus_one_shares_interpolated_anyway_give_a_wrong_value():
    # A cheating reconstruction that treats t-1 shares as enough recovers garbage, not the secret.
    secret, t = int.from_bytes(os.urandom(32), "big"), 5
    shares = shamir.split(secret, t, list(range(1, 9)))
    for subset in itertools.combinations(shares, t - 1):
        assert shamir.reconstruct({x: shares[x] for x in subset}, t - 1) != secret


@pytest.mark.parametrize("xs", [(1, 2), (3, 7), (5, 16)])
def test_t_minus_one_shares_are_uniform_whatever_the_secret(xs):
    # Information-theoretic hiding, checked exhaustively in GF(17) with t = 3: for every secret the map
    # (a1, a2) -> (f(x1), f(x2)) is a bijection of GF(17)^2, so the two shares are uniformly distributed
    # independently of the secret; each pair of share values is consistent with every secret exactly once.
    p, t = 17, 3
    for secret in range(p):
        images = {
            tuple(shamir.evaluate((secret, a1, a2), x, p) for x in xs) for a1 in range(p) for a2 in range(p)
        }
        assert len(images) == p ** (t - 1)


def test_shares_of_the_same_secret_differ_between_splits():
    # Coefficients come from the OS CSPRNG, not from anything deterministic.
    a = shamir.split(123, 3, [1, 2, 3])
    b = shamir.split(123, 3, [1, 2, 3])
    assert a != b
    assert shamir.reconstruct(a, 3) == shamir.reconstruct(b, 3) == 123


def test_share_encoding_round_trips_and_rejects_bad_bytes():
    value = PRIME - 1
    data = shamir.encode_share(value)
    assert len(data) == shamir.SHARE_BYTES
    assert shamir.decode_share(data) == value
    with pytest.raises(ShareFormatError):
        shamir.decode_share(PRIME.to_bytes(shamir.SHARE_BYTES, "big"))
    with pytest.raises(ShareFormatError):
        shamir.decode_share(data[:-1])


@pytest.mark.parametrize(
    ("secret", "t", "xs"),
    [(1, 0, [1, 2]), (1, 3, [1, 2]), (1, 2, [0, 1]), (1, 2, [1, 1]), (PRIME, 2, [1, 2]), (-1, 2, [1, 2])],
    ids=["t0", "t>n", "x0", "dup-x", "secret>=p", "negative"],
)
def test_split_refuses_bad_arguments(secret, t, xs):
    with pytest.raises(ValueError):
        shamir.split(secret, t, xs)
