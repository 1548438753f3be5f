"""Load a finished run and use its trained models: evaluate returns, render episodes, write a video.

Two lines from Python::

    import securefrl
    returns = securefrl.load_run("results/demo").evaluate(client=0, episodes=10)

and ``securefrl evaluate RUN --client 0 --episodes 10 [--render rgb_array --video out.gif]`` on the
command line. The federation is rebuilt from the run's ``config.yaml`` and restored from its
``checkpoint.pt`` (tensors only, ``weights_only=True``); client ``i`` is evaluated in its own
environment with the model it holds after the last round: the global model (with the client's own
local parts under personalization), or with ``model="personal"`` the model it would deploy (Ditto's
personal model, a fine-tuned model, ...).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from securefrl.errors import ConfigError
from securefrl.results import RunInfo, read_run, resolve_run

MODELS = ("global", "personal")


@dataclass
class Evaluation:
    """Returns of one client's model over seeded greedy episodes (and the video, if one was written)."""

    client: int
    model: str
    returns: list[float]
    video: Path | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


class Run(RunInfo):
    """A run on disk with lazily restored trained models."""

    @functools.cached_property
    def experiment_config(self) -> Any:
        from securefrl.config import load_config

        # Evaluation runs in this process whatever backend trained the run (same models, same returns).
        return load_config(self.path / "config.yaml", ["federation.backend=local"])

    @functools.cached_property
    def federation(self) -> Any:
        """The federation restored from the checkpoint (state after the last finished round)."""
        import torch

        from securefrl.federation import make_federation

        ckpt = self.path / "checkpoint.pt"
        if not ckpt.is_file():
            raise ConfigError("run", f"{self.path} has no checkpoint.pt (the run finished no round)")
        fed = make_federation(self.experiment_config)
        fed.load_state_dict(torch.load(ckpt, weights_only=True)["federation"])
        return fed

    def model(self, client: int = 0, model: str = "global") -> np.ndarray:
        """Flat parameters of ``client``'s ``global`` (as released to it) or ``personal`` model."""
        fed = self.federation
        if not 0 <= client < len(fed.clients):
            raise ConfigError("client", f"no client {client}; this run has clients 0..{len(fed.clients) - 1}")
        if model not in MODELS:
            raise ConfigError("model", f"{model!r} is not a model; choose one of {list(MODELS)}")
        c = fed.clients[client]
        if model == "personal" and hasattr(fed, "personal_model"):
            return np.asarray(fed.personal_model(c))
        return np.asarray(fed._client_model(c))

    def agent(self, client: int = 0, model: str = "global") -> Any:
        """Client ``client``'s agent holding the chosen model (call ``.act(obs)`` on it)."""
        flat = self.model(client, model)  # checks client and model first
        agent = self.federation.clients[client].agent
        agent.set_flat(flat)
        return agent

    def evaluate(self, client: int = 0, episodes: int = 5, model: str = "global", seed: int | None = None,
                 render: str | None = None, video: str | Path | None = None, fps: int = 30) -> list[float]:
        """Greedy returns of ``client``'s model over ``episodes`` seeded episodes in its own environment."""
        return self.evaluation(client, episodes, model, seed, render, video, fps).returns

    def evaluation(self, client: int = 0, episodes: int = 5, model: str = "global", seed: int | None = None,
                   render: str | None = None, video: str | Path | None = None, fps: int = 30) -> Evaluation:
        """:meth:`evaluate` with the details (mean, std, video path)."""
        from securefrl.seeding import derive_seed

        if episodes < 1:
            raise ConfigError("episodes", f"must be at least 1, got {episodes}")
        if video is not None and render is None:
            render = "rgb_array"
        if render not in (None, "rgb_array", "human"):
            raise ConfigError("render", f"{render!r} is not a render mode; choose rgb_array or human")
        if video is not None and render != "rgb_array":
            raise ConfigError("video", "a video needs --render rgb_array")
        if video is not None:
            _video_writer(Path(video))  # refuse an unsupported format before playing any episode
        agent = self.agent(client, model)
        spec = self.federation.clients[client].env_spec
        env = spec.make(render_mode=render)
        base = derive_seed(self.experiment_config.seed, "evaluate", client) % (2**31) if seed is None else seed
        frames: list[np.ndarray] = []
        returns = []
        try:
            for ep in range(episodes):
                obs, _ = env.reset(seed=base + ep)
                done, total = False, 0.0
                if render == "rgb_array":
                    frames.append(env.render())
                while not done:
                    obs, reward, terminated, truncated, _ = env.step(agent.act(obs, deterministic=True))
                    total += float(reward)
                    done = terminated or truncated
                    if render == "rgb_array":
                        frames.append(env.render())
                returns.append(total)
        finally:
            env.close()
        written = None
        if video is not None:
            written = Path(video)
            _video_writer(written)(written, frames, fps)
        return Evaluation(client, model, returns, written)


def load_run(path: str | Path, output_dir: str | Path = "results") -> Run:
    """The run at ``path``: a run folder, a folder of runs (its latest) or a run name under ``output_dir``."""
    info = read_run(resolve_run(path, output_dir))
    return Run(info.path, info.config, info.summary)


def _video_writer(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return _write_gif
    if suffix in (".mp4", ".webm", ".mov"):
        try:
            import imageio.v3  # noqa: F401
        except ImportError:
            raise ConfigError("video", f"writing {suffix} needs imageio with ffmpeg: pip install 'imageio[ffmpeg]' "
                              "(or write a .gif, which needs nothing more)") from None
        return _write_imageio
    raise ConfigError("video", f"unsupported video format {suffix!r}; use .gif or .mp4")


def _write_gif(path: Path, frames: list[np.ndarray], fps: int) -> None:
    from PIL import Image  # Pillow comes with matplotlib

    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)


def _write_imageio(path: Path, frames: list[np.ndarray], fps: int) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, np.stack(frames), fps=fps)
