"""Edge caching at a base station: which of F content items to keep in a cache of C.

The application of cooperative edge caching with deep Q-learning (Zhang et al., "Cooperative Edge
Caching: A Multi-Agent Deep Learning Based Approach", cited as [23] in the survey; Zhong et al. 2018,
"A Deep Reinforcement Learning-Based Framework for Content Caching", for the admit/evict action).
Each step one user request arrives for an item drawn from the base station's popularity law:
a Zipf law of exponent ``zipf_exponent`` over the station's own *ranking* of the items (Breslau et al.
1999, "Web Caching and Zipf-like Distributions"). A hit (the item is cached) earns reward 1; on a miss
the action decides whether the requested item is admitted and which slot it evicts. The return of an
episode of ``episode_length`` requests is its number of hits (hit rate = return / episode_length).

Where clients differ: items sit on a circle of "content types" (item ``i`` at ``(i + 0.5) / F``) and a
station ranks them by their circular distance to its own ``popularity_centre``; so stations with
different centres have different popular items, which is what local audiences do (Zhang et al. model
cells with different popularity). At heterogeneity 0 every station has centre 0.5 and exponent 1;
at 1 the centres spread over the whole circle and exponents over [0.6, 1.4].

Why a single policy is penalised: the observation is the cache content and the current request only
(no request statistics), so the caching decision for an item rests on the popularity the policy has
learned. The best policy of a station caches *its* top-C items; the top-C items of a station with the
opposite centre are its least popular ones (see :func:`static_policy` and the tests).

Randomness: ``reset`` draws the initial cache (C distinct items) and the episode's ``episode_length + 1``
request uniforms from the env's seeded ``np_random``; a request is the inverse-CDF of its uniform.
:class:`securefrl.envs.batched.EdgeCachingBatch` makes exactly the same draws per copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["EdgeCachingEnv", "draw_episode", "item_ranking", "popularity", "reference_policy", "requests_from_uniforms",
           "static_policy"]


def item_ranking(n_items: int, centre: float) -> np.ndarray:
    """Items ordered from most to least popular: by circular distance of ``(i + 0.5) / F`` to ``centre``.

    Distances are computed in item units and rounded so that equidistant items tie exactly and are
    ordered by index (a stable sort), whatever the float noise.
    """
    offset = np.mod(centre * n_items - 0.5 - np.arange(n_items), n_items)
    distance = np.round(np.minimum(offset, n_items - offset), 9)
    return np.argsort(distance, kind="stable")


def popularity(n_items: int, centre: float, exponent: float) -> np.ndarray:
    """Request probability of each item: Zipf weight ``1 / rank^exponent`` over :func:`item_ranking`."""
    weights = 1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** exponent
    probs = np.empty(n_items)
    probs[item_ranking(n_items, centre)] = weights / weights.sum()
    return probs


def requests_from_uniforms(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: the request for uniform ``u`` is the number of CDF steps below it.

    ``cdf`` is ``(..., F)``; ``u`` is ``(..., T)`` with matching leading shape. Integer counting keeps the
    per-env and the batched implementation identical.
    """
    return np.sum(cdf[..., None, :-1] <= u[..., :, None], axis=-1)


def draw_episode(rng: np.random.Generator, cdf: np.ndarray, cache_size: int,
                 length: int) -> tuple[np.ndarray, np.ndarray]:
    """Initial cache (``cache_size`` distinct items) and the ``length + 1`` requests of one episode."""
    cache = rng.permutation(cdf.shape[0])[:cache_size]
    u = rng.random(length + 1)
    return cache.astype(np.int64), requests_from_uniforms(cdf, u).astype(np.int64)


def observe(cache: np.ndarray, request: np.ndarray, n_items: int) -> np.ndarray:
    """One-hot of the item in each cache slot, then one-hot of the request: ``(..., (C + 1) * F)`` float32."""
    items = np.concatenate([cache, request[..., None]], axis=-1)
    onehot = np.zeros((*items.shape, n_items), dtype=np.float32)
    np.put_along_axis(onehot, items[..., None], 1.0, axis=-1)
    return onehot.reshape(*items.shape[:-1], -1)


def static_policy(probs: np.ndarray, cache_size: int) -> Callable[[np.ndarray], int]:
    """The hand-written policy for popularity ``probs``: admit a missed item iff it is among the top
    ``cache_size`` items, evicting the least popular cached one (optimal for an i.i.d. request law:
    the cache converges to the top-C items, hit rate = their total probability)."""
    top = set(np.argsort(-probs, kind="stable")[:cache_size].tolist())
    n_items = probs.shape[0]

    def act(obs: np.ndarray) -> int:
        onehot = obs.reshape(cache_size + 1, n_items)
        cache, request = onehot[:-1].argmax(axis=1), int(onehot[-1].argmax())
        if request in cache or request not in top:
            return 0
        return 1 + int(np.argmin(probs[cache]))

    return act


def reference_policy(env: EdgeCachingEnv) -> Callable[[np.ndarray], int]:
    """:func:`static_policy` for the station ``env`` (it reads the station's own popularity law)."""
    return static_policy(popularity(env.n_items, env.popularity_centre, env.zipf_exponent), env.cache_size)


class EdgeCachingEnv(gym.Env):
    """A base-station cache of ``cache_size`` out of ``n_items`` items under Zipf requests.

    Observation: ``(cache_size + 1) * n_items`` zeros and ones: the item in each cache slot, then the
    requested item (one-hot each). Action ``Discrete(cache_size + 1)``: 0 = do not admit the request,
    ``j >= 1`` = on a miss, store the requested item in slot ``j - 1`` (evicting its item); ignored on a
    hit. Reward: 1 for a hit, else 0. Never terminates; truncates after ``episode_length`` requests.
    The per-station attributes (``popularity_centre``, ``zipf_exponent``) take effect at the next reset.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - declared so by gymnasium.Env

    #: The station's popularity centre on the circle of content types [0, 1] (0 and 1 are the same point).
    popularity_centre: float = 0.5
    #: Zipf exponent of the station's popularity law (larger = more concentrated requests).
    zipf_exponent: float = 1.0

    def __init__(self, n_items: int = 12, cache_size: int = 3, episode_length: int = 100,
                 render_mode: str | None = None) -> None:
        if not 1 <= cache_size < n_items:
            raise ValueError(f"need 1 <= cache_size < n_items, got cache_size={cache_size}, n_items={n_items}")
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        self.n_items, self.cache_size, self.episode_length = int(n_items), int(cache_size), int(episode_length)
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0.0, 1.0, ((self.cache_size + 1) * self.n_items,), np.float32)
        self.action_space = spaces.Discrete(self.cache_size + 1)
        self.probs = popularity(self.n_items, self.popularity_centre, self.zipf_exponent)
        self.cache = np.zeros(self.cache_size, dtype=np.int64)
        self.requests = np.zeros(self.episode_length + 1, dtype=np.int64)
        self.t = 0

    def _obs(self) -> np.ndarray:
        return observe(self.cache, np.asarray(self.requests[self.t]), self.n_items)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.probs = popularity(self.n_items, self.popularity_centre, self.zipf_exponent)
        self.cache, self.requests = draw_episode(self.np_random, np.cumsum(self.probs), self.cache_size,
                                                 self.episode_length)
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r} for {self.action_space}")
        request = int(self.requests[self.t])
        hit = bool(np.any(self.cache == request))
        if not hit and int(action) > 0:
            self.cache[int(action) - 1] = request
        self.t += 1
        return self._obs(), float(hit), False, self.t >= self.episode_length, {"hit": hit}
