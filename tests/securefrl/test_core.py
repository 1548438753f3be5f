"""Parameter specs, update transforms, server optimizers, seeding."""

import numpy as np
import pytest
import torch

from securefrl.errors import UpdateRejectedError
from securefrl.params import ParamSpec, module_spec, set_flat
from securefrl.seeding import derive_rng, derive_seed
from securefrl.server_opt import ServerOptimizer
from securefrl.transforms import chain, clip_by_l2_norm, identity


def test_param_spec_round_trip_is_exact():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    spec = module_spec(net.named_parameters())
    params = list(net.parameters())
    flat = spec.flatten(params)
    assert flat.dtype == np.float32 and flat.shape == (spec.dim,) == (4 * 5 + 5 + 5 * 2 + 2,)
    set_flat(params, spec, flat * 2)
    np.testing.assert_array_equal(spec.flatten(params), flat * 2)
    set_flat(params, spec, flat)
    assert spec.flatten(params).tobytes() == flat.tobytes()


def test_param_spec_mask_and_errors():
    spec = ParamSpec(("a", "b"), ((2, 3), (4,)))
    assert spec.mask(["b"]).tolist() == [False] * 6 + [True] * 4
    with pytest.raises(KeyError, match="unknown parameter"):
        spec.mask(["c"])
    with pytest.raises(ValueError, match="shape"):
        spec.unflatten(np.zeros(9))
    with pytest.raises(ValueError, match="NaN"):
        spec.unflatten(np.full(10, np.nan))


def test_clip_bounds_norm_and_rejects_nonfinite():
    rng = np.random.default_rng(0)
    t = chain(clip_by_l2_norm(1.5), identity())
    state = t.init(100)
    for scale in (0.01, 1.0, 1e6):
        out, state = t.update(rng.normal(size=100) * scale, state, rng)
        assert np.linalg.norm(out) <= 1.5 * (1 + 1e-6)
    small = np.full(4, 0.1)
    np.testing.assert_array_equal(t.update(small, state, rng)[0], small)
    for bad in (np.nan, np.inf):
        with pytest.raises(UpdateRejectedError):
            t.update(np.array([1.0, bad]), state, rng)


def test_server_optimizers():
    p = np.zeros(3, dtype=np.float32)
    d = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(ServerOptimizer("fedavg", lr=0.5).step(p, d), 0.5 * d)
    m = ServerOptimizer("fedavgm", lr=1.0, beta1=0.5)
    p1 = m.step(p, d)
    p2 = m.step(p1, d)
    np.testing.assert_allclose(p2, d + 1.5 * d)
    a = ServerOptimizer("fedadam", lr=0.1, eps=1e-8)
    step = a.step(p, d)
    np.testing.assert_allclose(step, 0.1 * np.sign(d) * (0.1 / np.sqrt(0.01)), rtol=1e-4)
    with pytest.raises(ValueError, match="fedavg"):
        ServerOptimizer("sgd")


def test_derived_streams_are_reproducible_and_independent():
    assert derive_seed(1, "a", 2) == derive_seed(1, "a", 2)
    assert derive_seed(1, "a", 2) != derive_seed(1, "a", 3)
    assert derive_seed(1, "a") != derive_seed(2, "a")
    np.testing.assert_array_equal(derive_rng(5, "x").normal(size=3), derive_rng(5, "x").normal(size=3))
