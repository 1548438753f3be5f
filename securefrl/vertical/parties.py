"""The three kinds of node in vertical FRL: encoder parties, the Q-network agent, the shared environment.

Split learning of a DQN (Mnih et al. 2015) across parties that observe disjoint features of one
environment, as in FedRL (Zhuo et al. 2019) and vertical FL (Liu et al. 2019; survey: Qi et al. 2021):

* an :class:`EncoderParty` reads its own slice of every observation with its own sensors, keeps those
  raw slices in a local store indexed by transition id, and releases only (optionally clipped and
  noised) embeddings ``h_i = f_i(o[P_i])`` of them, encrypted for the Q-network agent;
* the :class:`QAgent` receives the reward and termination flag from the environment, holds the replay
  record ``(transition id, action, reward, terminated)``, combines the embeddings (concatenation or
  sum), learns ``Q(h_1, ..., h_n, .)`` by (Double-)DQN TD learning and returns ``dL/dh_i`` to each
  party, which back-propagates it into its encoder and steps its own optimizer;
* the :class:`VerticalEnvironment` is the physical world: it executes the Q-network agent's action and
  its sensors hand each party its slice directly (never over the wire).

Replay without sharing observations: the Q-network agent samples transition ids; each party looks up
its own slices for those ids and recomputes embeddings with its current (and target) encoder, so
gradients flow into the encoders and nobody but the owner ever stores a raw slice.

What leaks anyway, stated plainly: embeddings are a function of the raw slice (the optional Gaussian
noise limits what one release says about one slice; see :meth:`EncoderParty.release`); the gradients
returned to a party depend on the reward and the other parties' embeddings (label leakage in split
learning, Li et al. 2022, "Label Leakage and Protection in Two-party Split Learning"); message sizes
and timing are public. Nodes hold no references to one another: only bytes pass between them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from protocols import crypto
from securefrl.agents.common import init_generator
from securefrl.agents.networks import frozen_copy, hard_update, mlp
from securefrl.errors import ConfigError
from securefrl.privacy.noise import gaussian_noise
from securefrl.vertical.channel import (
    ChannelEnd,
    Direction,
    Kind,
    UnexpectedMessageError,
    clear_message,
    decode_arrays,
    encode_arrays,
    hello,
    open_clear,
)
from securefrl.vertical.config import VFRLConfig

Q_NAME = "q"
ENV_NAME = "env"


def party_name(party: int) -> str:
    """Wire name of party ``party`` (ids start at 1)."""
    return f"party{party}"


class EncoderParty:
    """A party that observes ``indices`` of the observation and owns an encoder over them.

    Holds: its raw partial observations (current one and a ring store keyed by transition id), its
    encoder, target encoder and optimizer, its noise generator and its channel end. Releases: encrypted
    embeddings only.
    """

    def __init__(self, party: int, indices: Sequence[int], config: VFRLConfig, init_seed: int,
                 noise_rng: np.random.Generator) -> None:
        self.party = party
        self.name = party_name(party)
        self.indices = tuple(indices)
        self.config = config
        cfg = config.dqn
        dim = len(self.indices)
        self.encoder = mlp(dim, config.embed_dim, config.encoder_hidden, init_generator(init_seed))
        if config.embedding_norm == "layernorm":
            self.encoder.append(torch.nn.LayerNorm(config.embed_dim, elementwise_affine=False))
        elif config.embedding_norm == "tanh":
            self.encoder.append(torch.nn.Tanh())
        self.target_encoder = frozen_copy(self.encoder)
        self.optimizer = torch.optim.Adam(self.encoder.parameters(), lr=cfg.lr)
        self.noise_rng = noise_rng
        cap = cfg.buffer_size
        self._obs = np.zeros((cap, dim), dtype=np.float32)
        self._next_obs = np.zeros((cap, dim), dtype=np.float32)
        self._tids = np.full(cap, -1, dtype=np.int64)
        self._releases = np.zeros(cap, dtype=np.int64)
        self._current = np.zeros(dim, dtype=np.float32)
        self._pending: tuple[int, torch.Tensor] | None = None
        self._key = crypto.generate_private_key()
        self.channel: ChannelEnd | None = None
        self.updates = 0
        self.total_releases = 0

    # --- session ----------------------------------------------------------------------------
    def hello(self) -> bytes:
        """Our public key for the Q-network agent."""
        return hello(self._key, self.party, Direction.TO_Q)

    def connect(self, q_hello: bytes) -> None:
        """Derive the channel keys from the Q-network agent's HELLO; the private key is then dropped."""
        self.channel = ChannelEnd.establish("party", self.party, self._key, q_hello, self.config.max_message_bytes)
        del self._key

    def _chan(self) -> ChannelEnd:
        if self.channel is None:
            raise UnexpectedMessageError(f"{self.name} has no channel yet; exchange HELLO messages first")
        return self.channel

    # --- local sensing and storage ------------------------------------------------------------
    def sense(self, part: np.ndarray) -> None:
        """Local sensor reading of the current observation slice (never crosses the wire)."""
        self._current = np.asarray(part, dtype=np.float32).reshape(-1).copy()

    def store(self, tid: int, next_part: np.ndarray) -> None:
        """Keep ``(current slice, next slice)`` of transition ``tid`` in the party's own replay store."""
        slot = tid % len(self._tids)
        self._obs[slot] = self._current
        self._next_obs[slot] = np.asarray(next_part, dtype=np.float32).reshape(-1)
        self._tids[slot] = tid
        self._releases[slot] = 1  # the acting release of this transition's observation

    def lookup(self, tids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The party's own ``(slice, next slice)`` rows of transitions ``tids`` (local use only)."""
        tids = np.asarray(tids, dtype=np.int64)
        slots = tids % len(self._tids)
        if np.any(tids < 0) or np.any(self._tids[slots] != tids):
            raise UnexpectedMessageError(f"{self.name} does not hold all requested transitions (evicted or unknown)")
        return self._obs[slots], self._next_obs[slots]

    def raw_observations(self) -> np.ndarray:
        """Every raw slice this party holds (for audits and tests: it never leaves the party)."""
        filled = self._tids >= 0
        return np.concatenate([self._current[None], self._obs[filled], self._next_obs[filled]])

    def release_counts(self) -> np.ndarray:
        """Per stored transition: how many embeddings of its slices have been released so far."""
        return self._releases[self._tids >= 0].copy()

    # --- releases ---------------------------------------------------------------------------
    def release(self, emb: torch.Tensor) -> torch.Tensor:
        """Clip each embedding row to L2 norm ``C`` and add ``N(0, (z C)^2)`` per coordinate, if configured.

        Privacy unit: one partial observation in one released row. Clipped rows of two different
        observations differ by at most ``2C`` in L2, so one release is a Gaussian mechanism with noise
        multiplier ``z / 2`` w.r.t. replacing that observation. The same observation is released again at
        every replay sample (and as a next state); those releases are counted (:meth:`release_counts`)
        but not composed into an epsilon here. Clipping is differentiable, so gradients still reach the
        encoder; the noise is additive, so ``dL/d(noisy) = dL/d(clipped)``.
        """
        cfg = self.config
        if cfg.embedding_clip is not None:
            norms = emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
            emb = emb * (cfg.embedding_clip / norms).clamp(max=1.0)
        if cfg.noise_multiplier > 0:
            assert cfg.embedding_clip is not None  # validated
            std = cfg.noise_multiplier * cfg.embedding_clip
            noise = gaussian_noise(std, tuple(emb.shape), self.noise_rng, secure=cfg.secure_noise)
            emb = emb + torch.from_numpy(noise.astype(np.float32))
        self.total_releases += int(emb.shape[0])
        return emb

    def embed_for_action(self, step: int) -> tuple[bytes, bytes]:
        """Encrypted embedding of the current slice for the action at ``step``: ``(wire message, plaintext)``.

        The plaintext is returned only so an audit log can check it; the wire carries the ciphertext.
        """
        with torch.no_grad():
            emb = self.release(self.encoder(torch.from_numpy(self._current[None])))
        plaintext = encode_arrays([emb.numpy()])
        return self._chan().seal(Kind.EMBED_ACT, step, plaintext), plaintext

    def answer_batch(self, request: bytes, update: int) -> tuple[bytes, bytes]:
        """Embed the requested transitions; returns ``(wire message, plaintext)`` (plaintext for audits).

        The obs embedding keeps its autograd graph until :meth:`apply_gradient` for the same update.
        """
        (tids,) = decode_arrays(self._chan().open(request, Kind.BATCH_REQUEST, update), [(np.int64, 1)])
        obs_np, nxt_np = self.lookup(tids)
        slots = tids % len(self._tids)
        obs, nxt = torch.from_numpy(obs_np), torch.from_numpy(nxt_np)
        emb = self.release(self.encoder(obs))
        arrays = [emb.detach().numpy()]
        with torch.no_grad():
            if self.config.dqn.double_dqn:
                arrays.append(self.release(self.encoder(nxt)).numpy())
            arrays.append(self.release(self.target_encoder(nxt)).numpy())
        np.add.at(self._releases, slots, len(arrays))
        self._pending = (update, emb)
        plaintext = encode_arrays(arrays)
        return self._chan().seal(Kind.EMBED_TRAIN, update, plaintext), plaintext

    def apply_gradient(self, message: bytes, update: int) -> None:
        """Back-propagate ``dL/dh`` from the Q-network agent into the encoder and take an optimizer step."""
        grad, flags = decode_arrays(self._chan().open(message, Kind.GRADIENT, update),
                                    [(np.float32, 2), (np.uint8, 1)])
        if self._pending is None or self._pending[0] != update:
            raise UnexpectedMessageError(f"{self.name} got a gradient for update {update} it did not embed")
        emb = self._pending[1]
        self._pending = None
        if grad.shape != tuple(emb.shape) or flags.shape != (1,):
            raise UnexpectedMessageError(f"gradient of shape {grad.shape}, expected {tuple(emb.shape)}")
        self.optimizer.zero_grad(set_to_none=True)
        emb.backward(torch.from_numpy(grad))
        if self.config.dqn.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.encoder.parameters(), self.config.dqn.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        if flags[0]:
            hard_update(self.target_encoder, self.encoder)


class QAgent:
    """The Q-network agent: combines embeddings, acts, holds the reward, learns Q by TD, returns gradients.

    Holds: the Q head and its target, the optimizer, the replay record ``(tid, action, reward,
    terminated)``, its random generator (exploration, replay sampling) and one channel end per party.
    It never receives a raw observation; it receives the reward (it is the "active party" that owns the
    training signal, as the label holder in vertical FL, Liu et al. 2019).
    """

    def __init__(self, party_ids: Sequence[int], n_actions: int, config: VFRLConfig, init_seed: int,
                 rng: np.random.Generator) -> None:
        self.config = config
        cfg = config.dqn
        self.party_ids = tuple(party_ids)
        self.n_actions = n_actions
        in_dim = config.embed_dim * (len(self.party_ids) if config.combine == "concat" else 1)
        self.head = mlp(in_dim, n_actions, config.head_hidden, init_generator(init_seed))
        self.target_head = frozen_copy(self.head)
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=cfg.lr)
        self.rng = rng
        cap = cfg.buffer_size
        self._tids = np.zeros(cap, dtype=np.int64)
        self._actions = np.zeros(cap, dtype=np.int64)
        self._rewards = np.zeros(cap, dtype=np.float32)
        self._terminated = np.zeros(cap, dtype=np.float32)
        self._size = 0
        self._pos = 0
        self._pending: tuple[int, np.ndarray] | None = None
        self._last_action: tuple[int, int] | None = None
        self._key = crypto.generate_private_key()
        self.channels: dict[int, ChannelEnd] = {}
        self.num_timesteps = 0
        self.num_updates = 0
        self.last_loss = float("nan")

    # --- session ----------------------------------------------------------------------------
    def hello(self, party: int) -> bytes:
        """Our public key for ``party`` (one Q key per session; HKDF binds each channel to its party)."""
        return hello(self._key, party, Direction.FROM_Q)

    def connect(self, party: int, party_hello: bytes) -> None:
        """Derive the channel keys with ``party``; the private key is dropped once every party is connected."""
        if party not in self.party_ids:
            raise UnexpectedMessageError(f"party {party} is not part of this session {self.party_ids}")
        self.channels[party] = ChannelEnd.establish("q", party, self._key, party_hello,
                                                    self.config.max_message_bytes)
        if len(self.channels) == len(self.party_ids):
            del self._key

    # --- acting -------------------------------------------------------------------------------
    def epsilon(self) -> float:
        """Linear epsilon schedule over the environment steps taken in training (as :class:`DQNAgent`)."""
        cfg = self.config.dqn
        if cfg.exploration_steps == 0:
            return cfg.exploration_final_eps
        frac = min(1.0, self.num_timesteps / cfg.exploration_steps)
        return cfg.exploration_initial_eps + frac * (cfg.exploration_final_eps - cfg.exploration_initial_eps)

    def _combine(self, embs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(embs, dim=1) if self.config.combine == "concat" else torch.stack(embs).sum(0)

    def _open_embeddings(self, messages: Mapping[int, bytes], kind: Kind, step: int,
                         count: int) -> list[list[np.ndarray]]:
        if set(messages) != set(self.party_ids):
            raise UnexpectedMessageError(f"expected embeddings from parties {self.party_ids}, got {sorted(messages)}")
        out = []
        for p in self.party_ids:
            arrays = decode_arrays(self.channels[p].open(messages[p], kind, step), [(np.float32, 2)] * count)
            if any(a.shape[1] != self.config.embed_dim for a in arrays):
                raise UnexpectedMessageError(f"party {p} sent embeddings of width {arrays[0].shape[1]}, "
                                             f"expected {self.config.embed_dim}")
            out.append(arrays)
        return out

    def act(self, messages: Mapping[int, bytes], step: int, explore: bool) -> bytes:
        """Pick an action from the parties' embeddings (epsilon-greedy if ``explore``); returns the ACTION message.

        Embeddings are requested and opened even when the action is random, so the message pattern does
        not reveal exploration.
        """
        embs = [torch.from_numpy(a[0]) for a in self._open_embeddings(messages, Kind.EMBED_ACT, step, 1)]
        if explore and self.rng.random() < self.epsilon():
            action = int(self.rng.integers(self.n_actions))
        else:
            with torch.no_grad():
                action = int(self.head(self._combine(embs)).argmax(dim=1)[0])
        self._last_action = (step, action)
        return clear_message(Kind.ACTION, Direction.FROM_Q, 0, step, encode_arrays([np.array([action], np.int64)]))

    def record(self, tid: int, step: int, reward_message: bytes) -> None:
        """Store transition ``tid`` from our own action at ``step`` and the environment's REWARD message."""
        _, body = open_clear(reward_message, Kind.REWARD, self.config.max_message_bytes, step=step)
        reward, terminated = decode_arrays(body, [(np.float32, 1), (np.uint8, 1)])
        if self._last_action is None or self._last_action[0] != step:
            raise UnexpectedMessageError(f"reward for step {step} but no action was taken at that step")
        slot = self._pos
        self._tids[slot], self._actions[slot] = tid, self._last_action[1]
        self._rewards[slot], self._terminated[slot] = float(reward[0]), float(terminated[0])
        self._pos = (self._pos + 1) % len(self._tids)
        self._size = min(self._size + 1, len(self._tids))
        self.num_timesteps += 1

    # --- learning -----------------------------------------------------------------------------
    def request_batch(self, update: int) -> dict[int, tuple[bytes, bytes]]:
        """Sample a minibatch of transition ids (own generator) and ask every party to embed them.

        Returns ``{party: (wire message, plaintext)}``; the plaintext is for audit logs only.
        """
        if self._size == 0:
            raise UnexpectedMessageError("replay is empty; nothing to train on")
        idx = self.rng.integers(0, self._size, size=self.config.dqn.batch_size)
        self._pending = (update, idx)
        body = encode_arrays([self._tids[idx]])
        return {p: (self.channels[p].seal(Kind.BATCH_REQUEST, update, body), body) for p in self.party_ids}

    def learn(self, messages: Mapping[int, bytes], update: int) -> dict[int, tuple[bytes, bytes]]:
        """One TD step on the requested minibatch; returns ``{party: (GRADIENT message, plaintext)}``.

        Huber loss against (Double-)DQN targets (van Hasselt et al. 2016) from the target head applied to
        the parties' target embeddings. The head is updated here; ``dL/dh_i`` goes back to party ``i``.
        Target networks (head and encoders) are synchronised together via the flag in the message.
        """
        if self._pending is None or self._pending[0] != update:
            raise UnexpectedMessageError(f"embeddings for update {update} arrive without a matching request")
        idx = self._pending[1]
        self._pending = None
        cfg = self.config.dqn
        n_arrays = 3 if cfg.double_dqn else 2
        opened = self._open_embeddings(messages, Kind.EMBED_TRAIN, update, n_arrays)
        if any(a.shape[0] != len(idx) for arrays in opened for a in arrays):
            raise UnexpectedMessageError(f"embeddings do not cover the {len(idx)} requested transitions")
        leaves = [torch.from_numpy(arrays[0]).requires_grad_(True) for arrays in opened]
        actions = torch.from_numpy(self._actions[idx])
        rewards = torch.from_numpy(self._rewards[idx])
        terminated = torch.from_numpy(self._terminated[idx])
        q = self.head(self._combine(leaves)).gather(1, actions.view(-1, 1)).squeeze(1)
        with torch.no_grad():
            next_q_target = self.target_head(self._combine([torch.from_numpy(a[-1]) for a in opened]))
            if cfg.double_dqn:
                next_a = self.head(self._combine([torch.from_numpy(a[1]) for a in opened])).argmax(1, keepdim=True)
                next_q = next_q_target.gather(1, next_a).squeeze(1)
            else:
                next_q = next_q_target.max(dim=1).values
            target = rewards + cfg.gamma * (1.0 - terminated) * next_q
        loss = F.smooth_l1_loss(q, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.head.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.num_updates += 1
        self.last_loss = float(loss.detach())
        sync = self.num_updates % cfg.target_update_interval == 0
        if sync:
            hard_update(self.target_head, self.head)
        flag = np.array([1 if sync else 0], dtype=np.uint8)
        out = {}
        for p, leaf in zip(self.party_ids, leaves, strict=True):
            assert leaf.grad is not None
            body = encode_arrays([leaf.grad.numpy(), flag])
            out[p] = (self.channels[p].seal(Kind.GRADIENT, update, body), body)
        return out


class VerticalEnvironment:
    """The shared physical environment: executes actions, and its sensors give each party its own slice.

    Not an agent: it necessarily "has" the full state. It sends the Q-network agent the reward and the
    termination flag (REWARD messages) and hands party ``i`` only ``o[P_i]`` (locally, not on the wire).
    """

    def __init__(self, env_id: str, partition: Sequence[Sequence[int]]) -> None:
        self.env = gym.make(env_id)
        space = self.env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ConfigError("vfrl.env_id", f"VFRL needs a 1-D Box observation space, got {space}")
        if not isinstance(self.env.action_space, gym.spaces.Discrete):
            raise ConfigError("vfrl.env_id", f"VFRL (DQN) needs a Discrete action space, got {self.env.action_space}")
        self.obs_dim = int(space.shape[0])
        self.n_actions = int(self.env.action_space.n)
        self.partition = [np.asarray(p, dtype=np.intp) for p in partition]
        self._obs = np.zeros(self.obs_dim, dtype=np.float32)
        self.episode_return = 0.0
        self.finished: list[float] = []

    def reset(self, seed: int | None) -> None:
        """Start an episode (``seed`` None continues the environment's own generator)."""
        obs, _ = self.env.reset(seed=seed)
        self._obs = np.asarray(obs, dtype=np.float32)
        self.episode_return = 0.0

    def sensor(self, i: int) -> np.ndarray:
        """What party ``i``'s own sensors read of the current observation (index into the partition)."""
        return self._obs[self.partition[i]].copy()

    def step(self, action_message: bytes, step: int, max_bytes: int) -> tuple[bytes, list[np.ndarray], bool]:
        """Execute the ACTION; returns the REWARD message, every party's slice of the resulting
        observation (the true final one if the episode ended) and whether the episode ended (then reset).
        """
        _, body = open_clear(action_message, Kind.ACTION, max_bytes, step=step)
        (action,) = decode_arrays(body, [(np.int64, 1)])
        if action.shape != (1,) or not 0 <= int(action[0]) < self.n_actions:
            raise UnexpectedMessageError(f"action {action.tolist()} is not in 0..{self.n_actions - 1}")
        obs, reward, terminated, truncated, _ = self.env.step(int(action[0]))
        obs = np.asarray(obs, dtype=np.float32)
        self.episode_return += float(reward)
        parts = [obs[p].copy() for p in self.partition]
        done = bool(terminated or truncated)
        if done:
            self.finished.append(self.episode_return)
            self.reset(None)
        else:
            self._obs = obs
        reward_msg = clear_message(Kind.REWARD, Direction.TO_Q, 0, step, encode_arrays(
            [np.array([reward], np.float32), np.array([1 if terminated else 0], np.uint8)]))
        return reward_msg, parts, done

    def close(self) -> None:
        """Release the gymnasium environment."""
        self.env.close()
