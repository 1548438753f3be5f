"""Evaluation harness: attacks x defences x protocols x seeds, and inference attacks x protocols x DP.

One call (:func:`run_matrix`, or ``securefrl attack-matrix --config matrix.toml``) runs every cell of the
matrix with real federations and writes, to ``<output_dir>/<name>/``:

==================  ===================================================================================
``cells.csv``       one row per cell and seed: status (ok / invalid / error, with the reason), final
                    return, the honest-only return it is compared with, the ratio, backdoor success (with
                    two baselines: the target-action rate without trigger, and the honest-only model's
                    success rate under the same trigger), inference metric and its chance level
``summary.md``      Markdown tables (mean ± std over seeds): relative return per attack x defence and
                    protocol, which defence keeps >= ``keep_fraction`` of the honest-only return,
                    backdoor success, inference results per protocol and DP setting
``summary.json``    the same aggregates as data
``relative_return.png``, ``backdoor.png``, ``inference.png``   heatmaps
==================  ===================================================================================

Poisoning cells
---------------
The honest-only reference of a (protocol, seed) is the same federation with no attack and plain FedAvg.
A cell's *final return* is the honest clients' mean greedy return with the global model over the last
``tail_rounds`` rounds. Defences: ``fedavg``; any robust rule of :mod:`securefrl.aggregators` (the
defender assumes ``n_malicious`` Byzantine clients whether or not there is an attack); ``clip``
(FedAvg with client-side L2 clipping, ``federation.clip_norm``) and ``dp`` (clipping plus local Gaussian
noise, seeded -- ``secure=False`` -- so every cell reproduces; no cell's attack uses the seed). ``clip`` and
``dp`` run in every client's pipeline, *including the malicious clients'*: that models clipping enforced
on the wire (e.g. zero-knowledge norm proofs as in RoFL, Lycklama et al. 2023), an optimistic assumption
under plain SecAgg/CKKS where nobody can check it.

Invalid combinations (a robust rule under CKKS or SecAgg, Krum with too few clients, ALIE with too many
attackers, ...) are refused by the configuration layer at construction time; the harness records the
refusal as a labelled ``invalid`` cell. A run that fails (e.g. a protocol rejecting out-of-range
updates) becomes a labelled ``error`` cell. Neither stops the matrix.

Inference cells
---------------
For every inference attack, protocol, DP setting and seed the harness runs the attack's study
(:mod:`attacks.inference`) on its own small federation, under that protocol, with the DP noise in the
clients' pipeline; server-side attacks get only what the protocol reveals through
:class:`~attacks.inference.common.ServerRecorder` views.

Every federation is built by :func:`securefrl.federation.make_federation`, so personalization, the
vectorized simulation and the Ray backend given in ``base`` are honoured in every cell.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attacks.environment import ObservationBackdoor, backdoor_success_rate
from attacks.inference.common import DP_PLACEMENTS, dp_pipeline
from attacks.registry import REGISTRY
from securefrl.aggregators import RULES
from securefrl.config import PROTOCOLS, ExperimentConfig, load_config, read_config_file
from securefrl.configtools import apply_override, check_range, from_dict, to_dict
from securefrl.errors import ConfigError
from securefrl.federation import Federation, make_federation
from securefrl.registry import Registry
from securefrl.results import json_safe, new_run_dir
from securefrl.seeding import derive_seed, sample_size

__all__ = [
    "DEFENCES",
    "INFERENCE_ATTACKS",
    "MatrixConfig",
    "load_matrix_config",
    "run_matrix",
    "write_outputs",
]

#: Defences besides the robust rules: plain FedAvg, enforced client clipping, clipping + local DP noise.
EXTRA_DEFENCES: tuple[str, ...] = ("fedavg", "clip", "dp")
DEFENCES: tuple[str, ...] = EXTRA_DEFENCES + tuple(r for r in sorted(RULES) if r != "fedavg")

CSV_COLUMNS = ("kind", "attack", "defence", "protocol", "dp", "seed", "status", "reason", "final_return",
               "honest_return", "relative_return", "asr", "clean_target_rate", "reference_asr", "metric", "value",
               "chance", "seconds", "target", "succeeded")


def _small_base() -> dict[str, Any]:
    return {
        "env": {"name": "cartpole", "heterogeneity": 0.5},
        "agent": {"name": "ppo"},
        "federation": {"n_clients": 6, "rounds": 4, "local_steps": 512, "eval_episodes": 1},
    }


@dataclass
class MatrixConfig:
    """An attack-evaluation matrix (TOML/YAML file; ``--set key=value`` overrides it)."""

    name: str = "attack-matrix"
    """Results folder name under output_dir."""
    output_dir: str = "results"
    """Folder that receives the matrix's folder."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Master seeds; every cell runs once per seed."""
    base: dict[str, Any] = field(default_factory=_small_base)
    """Experiment config (as in `securefrl run --config`) shared by every poisoning cell; protocol, attack,
    aggregator and seed are set per cell."""
    attacks: list[str] = field(default_factory=lambda: ["none", "sign_flip", "alie", "ipm"])
    """Attack labels: 'none', a registered attack (see attack names), or a label defined in attack_params."""
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per attack label, its parameters; the key 'attack' names the registered attack when the label is an
    alias (e.g. ipm_large = {attack = "ipm", epsilon = 10}). alie gets n_clients/n_malicious by default."""
    n_malicious: int = 1
    """Malicious clients in every attacked cell (and the f every robust rule assumes)."""
    defences: list[str] = field(default_factory=lambda: ["fedavg", "median", "krum", "clip"])
    """Defences: fedavg, clip, dp, or a robust aggregation rule (median, trimmed_mean, krum, ...)."""
    defence_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per defence, its parameters: rule parameters (e.g. trimmed_mean = {beta = 0.2}); clip = {clip_norm};
    dp = {clip_norm, noise_multiplier}."""
    protocols: list[str] = field(default_factory=lambda: ["plaintext"])
    """Protocols of the poisoning cells: plaintext, secagg, ckks."""
    tail_rounds: int = 2
    """Final return = mean honest return over this many last rounds."""
    keep_fraction: float = 0.9
    """A defence 'holds' against an attack if it keeps this fraction of the honest-only return."""
    backdoor_episodes: int = 2
    """Clean episodes per honest client on which the backdoor success rate is measured."""
    inference: list[str] = field(default_factory=list)
    """Inference attacks to run: property, reconstruction, membership (empty = none)."""
    inference_protocols: list[str] = field(default_factory=lambda: ["plaintext", "secagg", "ckks"])
    """Protocols of the inference cells."""
    dp: list[str] = field(default_factory=lambda: ["none", "local"])
    """DP settings of the inference cells: none, local, distributed (securefrl.privacy noise placements)."""
    dp_clip: float = 1.0
    """L2 clip norm of the DP settings (and of the dp defence unless defence_params.dp says otherwise)."""
    dp_noise_multiplier: float = 1.0
    """Noise multiplier z of the DP settings (noise std z * clip)."""
    inference_base: dict[str, Any] = field(default_factory=dict)
    """Config overrides of the inference federations, applied on top of base (e.g. smaller networks)."""
    inference_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per inference attack, study parameters: property = {prop, n_shadow}; reconstruction = {batch_sizes,
    methods, rounds, dlg_iterations, dlg_restarts}; membership = {window}."""
    protocol_attacks: list[str] = field(default_factory=lambda: ["all"])
    """Protocol attacks (attacks.protocol: a malicious server, colluding clients) run against their weakened
    and their default target: 'all' = every registered one, [] = none (list them with --list)."""

    def validate(self, path: str) -> None:
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ConfigError("seeds", f"need at least one seed, all >= 0, got {self.seeds}")
        for p in [*self.protocols, *self.inference_protocols]:
            if p not in PROTOCOLS:
                raise ConfigError("protocols", f"unknown protocol {p!r}; choose from {list(PROTOCOLS)}")
        for d in self.defences:
            if d not in DEFENCES:
                raise ConfigError("defences", f"unknown defence {d!r}; choose from {list(DEFENCES)}")
        known = set(REGISTRY.names()) | {"none"}
        for a in self.attacks:
            if a not in known and a not in self.attack_params:
                raise ConfigError("attacks", f"unknown attack {a!r}; choose from {sorted(known)} or define it in "
                                             "attack_params with an 'attack' key")
            name = self.attack_params.get(a, {}).get("attack", a)
            if name not in known:
                raise ConfigError(f"attack_params.{a}.attack", f"unknown attack {name!r}; choose from {sorted(known)}")
        for inf in self.inference:
            if inf not in INFERENCE_ATTACKS:
                raise ConfigError("inference",
                                  f"unknown inference attack {inf!r}; choose from {list(INFERENCE_ATTACKS)}")
        if self.protocol_attacks != ["all"]:
            from attacks.protocol import load_all

            known_protocol = load_all()
            for a in self.protocol_attacks:
                if a not in known_protocol:
                    raise ConfigError("protocol_attacks", f"unknown protocol attack {a!r}; choose 'all' or from "
                                                          f"{sorted(known_protocol)}")
        for d in self.dp:
            if d not in DP_PLACEMENTS:
                raise ConfigError("dp", f"unknown DP setting {d!r}; choose from {list(DP_PLACEMENTS)}")
        check_range("n_malicious", self.n_malicious, 0)
        check_range("tail_rounds", self.tail_rounds, 1)
        check_range("keep_fraction", self.keep_fraction, 0.0, 1.0, lo_open=True)
        check_range("backdoor_episodes", self.backdoor_episodes, 1)
        check_range("dp_clip", self.dp_clip, 0.0, lo_open=True)
        check_range("dp_noise_multiplier", self.dp_noise_multiplier, 0.0)


def load_matrix_config(path: str | Path | None = None, overrides: list[str] | None = None) -> MatrixConfig:
    """A validated :class:`MatrixConfig` from an optional TOML/YAML file and ``key=value`` overrides."""
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    # A file lists only what it changes, also inside `base`: merge it over the small default base.
    data["base"] = _merge(_small_base(), data.get("base", {}))
    for ov in overrides or []:
        apply_override(data, ov)
    return from_dict(MatrixConfig, data)


def _merge(into: dict[str, Any], update: Any) -> dict[str, Any]:
    if not isinstance(update, dict):
        raise ConfigError("base", f"must be a table/mapping, got {type(update).__name__}")
    out = copy.deepcopy(into)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


# ---------------------------------------------------------------------------------------------------
# one poisoning cell
# ---------------------------------------------------------------------------------------------------


def _attack_section(m: MatrixConfig, label: str, n_sampled: int) -> dict[str, Any]:
    if label == "none":
        return {"name": "none", "n_malicious": 0, "params": {}}
    params = dict(m.attack_params.get(label, {}))
    name = params.pop("attack", label)
    if name == "alie" and "z" not in params:
        params.setdefault("n_clients", n_sampled)
        params.setdefault("n_malicious", m.n_malicious)
    return {"name": name, "n_malicious": m.n_malicious, "params": params}


def _cell_config(m: MatrixConfig, attack: str, defence: str, protocol: str, seed: int) -> tuple[ExperimentConfig,
                                                                                                   Any]:
    """The cell's validated config and its client pipeline (``None`` = default); ConfigError if invalid."""
    data = copy.deepcopy(m.base)
    data["seed"] = int(seed)
    data["name"] = f"{attack}-{defence}-{protocol}-s{seed}"
    fed = data.setdefault("federation", {})
    data["protocol"] = {**data.get("protocol", {}), "name": protocol}
    n = int(fed.get("n_clients", 8))
    n_sampled = sample_size(n, float(fed.get("client_fraction", 1.0)))
    data["attack"] = _attack_section(m, attack, n_sampled)
    dparams = dict(m.defence_params.get(defence, {}))
    pipeline = None
    if defence == "fedavg":
        fed["aggregator"] = "fedavg"
    elif defence == "clip":
        fed["aggregator"] = "fedavg"
        fed["clip_norm"] = float(dparams.pop("clip_norm", m.dp_clip))
    elif defence == "dp":
        fed["aggregator"] = "fedavg"
        pipeline = dp_pipeline("local", float(dparams.pop("clip_norm", m.dp_clip)),  # seeded: rows reproducible
                               float(dparams.pop("noise_multiplier", m.dp_noise_multiplier)), n_sampled, secure=False)
    else:
        fed["aggregator"] = defence
        fed["aggregator_params"] = {"n_malicious": m.n_malicious, **dparams}
        dparams = {}
    if dparams:
        raise ConfigError(f"defence_params.{defence}", f"unknown parameter(s) {sorted(dparams)}")
    return load_config(base=data), pipeline


def _honest_mean(record_rows: list[dict[str, Any]], malicious: set[int]) -> float:
    vals = [r["return_global"] for r in record_rows if r["client"] not in malicious]
    return float(np.mean(vals)) if vals else float("nan")


def _backdoor_report(fed: Federation, params: np.ndarray, m: MatrixConfig) -> Any:
    """Backdoor effect of the global model ``params`` on the clean environments of ``fed``'s honest clients."""
    honest = [c for c in fed.clients if not c.malicious]
    agent = honest[0].agent
    agent.set_flat(params)
    behaviour: Any = fed.behaviour  # an ObservationBackdoor (the caller checked)
    return backdoor_success_rate(agent.act, [c.env_spec.make() for c in honest], behaviour, m.backdoor_episodes,
                                 derive_seed(fed.config.seed, "backdoor-eval") % (2**31))


def _run_poisoning(cfg: ExperimentConfig, pipeline: Any, m: MatrixConfig, keep_params: bool = False) -> dict[str, Any]:
    fed = make_federation(cfg, pipeline=pipeline)
    malicious = set(fed.malicious_ids)
    per_round = [_honest_mean(fed.run_round().clients, malicious) for _ in range(cfg.federation.rounds)]
    out: dict[str, Any] = {"final_return": float(np.mean(per_round[-m.tail_rounds:]))}
    if isinstance(fed.behaviour, ObservationBackdoor):
        report = _backdoor_report(fed, fed.global_params, m)
        out.update(asr=report.success_rate, clean_target_rate=report.clean_target_rate)
    if keep_params:
        out["final_params"] = fed.global_params.copy()
    return out


def _reference_asr(m: MatrixConfig, attack: str, protocol: str, seed: int, params: np.ndarray) -> float:
    """Success rate of the *honest-only* model under the same trigger: the attack's real baseline.

    A trigger far outside the visited states can move a clean policy on its own (CartPole policies
    extrapolate: +3 on the velocities makes them push right), so the honest-only FedAvg model of the same
    protocol and seed is evaluated on the same states with the same trigger.
    """
    cfg, _ = _cell_config(m, attack, "fedavg", protocol, seed)
    return float(_backdoor_report(make_federation(cfg), params, m).success_rate)


# ---------------------------------------------------------------------------------------------------
# one inference cell
# ---------------------------------------------------------------------------------------------------


def _inference_config(m: MatrixConfig, protocol: str, seed: int) -> ExperimentConfig:
    data = copy.deepcopy(m.base)
    for key, value in m.inference_base.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(copy.deepcopy(value))
        else:
            data[key] = copy.deepcopy(value)
    data["seed"] = int(seed)
    data["name"] = f"inference-{protocol}-s{seed}"
    data.setdefault("federation", {})["aggregator"] = "fedavg"
    data["protocol"] = {**data.get("protocol", {}), "name": protocol}
    data["attack"] = {"name": "none", "n_malicious": 0, "params": {}}
    return load_config(base=data)


InferenceStudy = Callable[[ExperimentConfig, Any, dict[str, Any], MatrixConfig, str, int], list[dict[str, Any]]]
"""``study(cfg, pipeline, params, matrix, dp, seed) -> rows {metric, value, chance}``; pops what it uses from params."""

INFERENCE_ATTACKS: Registry[InferenceStudy] = Registry("inference attack", "inference",
                                                       group="securefrl.inference_attacks")
"""Inference studies of the matrix by name (:mod:`attacks.inference`)."""


def _run_inference(kind: str, cfg: ExperimentConfig, dp: str, m: MatrixConfig, seed: int) -> list[dict[str, Any]]:
    """Rows ``{metric, value, chance}`` of one inference study."""
    params = dict(m.inference_params.get(kind, {}))
    fedc = cfg.federation
    # Seeded noise (secure=False): every cell is seeded so its rows reproduce; the studies do not use the seed.
    pipe = dp_pipeline(dp, m.dp_clip, m.dp_noise_multiplier, sample_size(fedc.n_clients, fedc.client_fraction),
                       secure=False)
    rows = INFERENCE_ATTACKS.get(kind)(cfg, pipe, params, m, dp, seed)
    _no_leftovers(kind, params)
    return rows


@INFERENCE_ATTACKS.register("property")
def _property_study(cfg: ExperimentConfig, pipe: Any, params: dict[str, Any], m: MatrixConfig, dp: str,
                    seed: int) -> list[dict[str, Any]]:
    from attacks.inference.common import ServerRecorder
    from attacks.inference.property import PropertyInference

    fedc = cfg.federation
    n_sampled = sample_size(fedc.n_clients, fedc.client_fraction)
    prop = params.pop("prop", "pole_length")
    attack = PropertyInference(cfg, prop=prop, n_shadow=int(params.pop("n_shadow", 32)),
                               alpha=float(params.pop("alpha", 0.1)),
                               shadow_pipeline=dp_pipeline(dp, m.dp_clip, m.dp_noise_multiplier, n_sampled,
                                                           secure=False),
                               seed=derive_seed(seed, "property-attacker") % (2**31))
    _no_leftovers("property", params)
    fed = make_federation(cfg, pipeline=pipe)
    rec = ServerRecorder.attach(fed)
    for _ in range(fedc.rounds):
        fed.run_round()
    res = attack.run(rec.rounds, {c.client_id: c.env_spec.params[prop] for c in fed.clients})
    rows = [{"metric": f"property.{prop}.accuracy", "value": res.accuracy, "chance": res.chance},
            {"metric": f"property.{prop}.r2", "value": res.r2, "chance": 0.0}]
    if res.population_error is not None:  # SecAgg: the mean property of the included clients
        rows.append({"metric": f"property.{prop}.population_abs_error", "value": res.population_error,
                     "chance": res.prior_population_error})
    return rows


@INFERENCE_ATTACKS.register("reconstruction")
def _reconstruction_study(cfg: ExperimentConfig, pipe: Any, params: dict[str, Any], m: MatrixConfig, dp: str,
                          seed: int) -> list[dict[str, Any]]:
    from attacks.inference.reconstruction import reconstruction_study

    sizes = params.pop("batch_sizes", [1, 4])
    methods = params.pop("methods", ["analytic", "dlg"])
    kwargs = {k: params.pop(k) for k in ("rounds", "dlg_iterations", "dlg_restarts", "targets_per_round",
                                         "client_lr") if k in params}
    _no_leftovers("reconstruction", params)
    rows = []
    for b in sizes:
        for res in reconstruction_study(cfg, batch_size=int(b), pipeline=pipe, methods=methods,
                                        seed=derive_seed(seed, "reconstruction-attacker") % (2**31), **kwargs):
            rows.append({"metric": f"reconstruction.{res.method}.b{b}.cosine", "value": res.cosine,
                         "chance": res.prior_cosine})
            rows.append({"metric": f"reconstruction.{res.method}.b{b}.relative_mse", "value": res.relative_mse,
                         "chance": 1.0})
    return rows


@INFERENCE_ATTACKS.register("membership")
def _membership_study(cfg: ExperimentConfig, pipe: Any, params: dict[str, Any], m: MatrixConfig, dp: str,
                      seed: int) -> list[dict[str, Any]]:
    from attacks.inference.membership import membership_study

    window = int(params.pop("window", 16))
    _no_leftovers("membership", params)
    return [{"metric": f"membership.{res.adversary}.auc", "value": res.auc, "chance": 0.5}
            for res in membership_study(cfg, pipeline=pipe, window=window,
                                        seed=derive_seed(seed, "membership-challenger") % (2**31))]


def _no_leftovers(kind: str, params: dict[str, Any]) -> None:
    if params:
        raise ConfigError(f"inference_params.{kind}", f"unknown parameter(s) {sorted(params)}")


# ---------------------------------------------------------------------------------------------------
# the matrix
# ---------------------------------------------------------------------------------------------------


def _row(**kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(CSV_COLUMNS, "")
    row.update(kw)
    return row


def _error_reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".replace("\n", " ")


def _poisoning_task(m: MatrixConfig, attack: str, defence: str, protocol: str, seed: int,
                    keep_params: bool = False) -> dict[str, Any]:
    """One poisoning cell: ``{"status", "reason"?, results...}`` (never raises)."""
    t0 = time.perf_counter()
    try:
        cfg, pipe = _cell_config(m, attack, defence, protocol, seed)
    except ConfigError as err:
        return {"status": "invalid", "reason": str(err)}
    try:
        result = _run_poisoning(cfg, pipe, m, keep_params)
    except Exception as err:  # labelled, the matrix goes on
        traceback.print_exc(file=sys.stderr)
        return {"status": "error", "reason": _error_reason(err)}
    return {"status": "ok", "seconds": time.perf_counter() - t0, **result}


def _inference_task(m: MatrixConfig, kind: str, protocol: str, dp: str, seed: int) -> dict[str, Any]:
    """One inference cell: ``{"status", "reason"?, "results"?: [...]}`` (never raises)."""
    t0 = time.perf_counter()
    try:
        results = _run_inference(kind, _inference_config(m, protocol, seed), dp, m, seed)
    except ConfigError as err:
        return {"status": "invalid", "reason": str(err)}
    except Exception as err:
        traceback.print_exc(file=sys.stderr)
        return {"status": "error", "reason": _error_reason(err)}
    return {"status": "ok", "seconds": time.perf_counter() - t0, "results": results}


def protocol_attack_names(m: MatrixConfig) -> list[str]:
    """The protocol attacks ``m`` runs (every registered one for ``['all']``)."""
    from attacks.protocol import load_all

    registry = load_all()
    return sorted(registry) if m.protocol_attacks == ["all"] else list(m.protocol_attacks)


def _protocol_task(name: str, weakened: bool, seed: int) -> dict[str, Any]:
    """One protocol-attack run against its weakened or default target (never raises)."""
    from attacks.protocol import load_all

    t0 = time.perf_counter()
    try:
        out = load_all()[name]().run(weakened=weakened, seed=seed)
    except Exception as err:
        traceback.print_exc(file=sys.stderr)
        return {"status": "error", "reason": _error_reason(err)}
    return {"status": "ok", "seconds": time.perf_counter() - t0, "target": out.target, "succeeded": out.succeeded,
            "metric": out.metric_name, "value": float(out.metric), "reason": out.reason}


def _describe(task: tuple[Any, ...], out: dict[str, Any]) -> str:
    kind, *key = task
    head = "/".join(str(k) for k in key)
    if out["status"] != "ok":
        return f"{kind} {head}: {out['status']} — {out['reason']}"
    if kind == "protocol":
        verdict = "SUCCEEDED" if out["succeeded"] else "failed"
        return f"{kind} {head}: {verdict} against {out['target']} — {out['reason']} ({out['seconds']:.1f} s)"
    if kind == "inference":
        return f"{kind} {head}: " + ", ".join(f"{r['metric']}={r['value']:.3f}" for r in out["results"]) + \
            f" ({out['seconds']:.0f} s)"
    extra = f", ASR {out['asr']:.2f} (target rate clean {out['clean_target_rate']:.2f})" if "asr" in out else ""
    return f"{kind} {head}: final return {out['final_return']:.1f}{extra} ({out['seconds']:.0f} s)"


def _backdoor_labels(m: MatrixConfig) -> list[str]:
    return [a for a in m.attacks if m.attack_params.get(a, {}).get("attack", a) == ObservationBackdoor.name]


def _execute(m: MatrixConfig, task: tuple[Any, ...]) -> dict[str, Any]:
    kind, *key = task
    if kind == "inference":
        return _inference_task(m, *key)
    if kind == "protocol":
        name, target, seed = key
        return _protocol_task(name, target == "weakened", seed)
    reference = tuple(key[:2]) == ("none", "fedavg")
    attack, defence, protocol, seed = key
    return _poisoning_task(m, attack, defence, protocol, seed, keep_params=reference and bool(_backdoor_labels(m)))


def run_matrix(m: MatrixConfig, log: Callable[[str], None] | None = None, workers: int = 1) -> list[dict[str, Any]]:
    """Run every cell of ``m``; returns one row per cell and seed (see ``CSV_COLUMNS``).

    The honest-only reference of each (protocol, seed) is the ``none``/``fedavg`` cell (run once even if it
    is not in the matrix). ``workers > 1`` runs cells in that many processes; every cell is seeded, so the
    rows do not depend on ``workers``.
    """
    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError("workers", f"must be an integer >= 1, got {workers!r}")
    tasks: list[tuple[Any, ...]] = [("poisoning", "none", "fedavg", p, s) for p in m.protocols for s in m.seeds
                                    if m.attacks and m.defences]
    tasks += [("poisoning", a, d, p, s) for p in m.protocols for a in m.attacks for d in m.defences for s in m.seeds
              if (a, d) != ("none", "fedavg")]
    tasks += [("inference", k, p, dp, s) for k in m.inference for p in m.inference_protocols for dp in m.dp
              for s in m.seeds]
    tasks += [("protocol", a, t, s) for a in protocol_attack_names(m) for t in ("weakened", "default")
              for s in m.seeds]
    outputs: dict[tuple[Any, ...], dict[str, Any]] = {}
    if workers == 1:
        for i, task in enumerate(tasks):
            outputs[task] = _execute(m, task)
            say(f"[{i + 1}/{len(tasks)}] " + _describe(task, outputs[task]))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_execute, m, task): task for task in tasks}
            for i, fut in enumerate(as_completed(futures)):
                task = futures[fut]
                outputs[task] = fut.result()
                say(f"[{i + 1}/{len(tasks)}] " + _describe(task, outputs[task]))
    reference_params = {task: out.pop("final_params") for task, out in outputs.items() if "final_params" in out}
    rows: list[dict[str, Any]] = []
    for p in m.protocols:
        for a in m.attacks:
            for d in m.defences:
                for s in m.seeds:
                    base = {"kind": "poisoning", "attack": a, "defence": d, "protocol": p, "dp": "none", "seed": s}
                    out = dict(outputs[("poisoning", a, d, p, s)])
                    status = out.pop("status")
                    if status != "ok":
                        rows.append(_row(**base, status=status, reason=out.get("reason", "")))
                        continue
                    ref_out = outputs[("poisoning", "none", "fedavg", p, s)]
                    ref = ref_out["final_return"] if ref_out["status"] == "ok" else float("nan")
                    rel = out["final_return"] / ref if ref and not math.isnan(ref) else float("nan")
                    params = reference_params.get(("poisoning", "none", "fedavg", p, s))
                    if "asr" in out and params is not None:
                        out["reference_asr"] = _reference_asr(m, a, p, s, params)
                    rows.append(_row(**base, status="ok", honest_return=ref, relative_return=rel, **out))
    for k in m.inference:
        for p in m.inference_protocols:
            for dp in m.dp:
                for s in m.seeds:
                    base = {"kind": "inference", "attack": k, "defence": "dp-" + dp if dp != "none" else "none",
                            "protocol": p, "dp": dp, "seed": s}
                    out = outputs[("inference", k, p, dp, s)]
                    if out["status"] != "ok":
                        rows.append(_row(**base, status=out["status"], reason=out["reason"]))
                        continue
                    for r in out["results"]:
                        rows.append(_row(**base, status="ok", seconds=out["seconds"], **r))
    for a in protocol_attack_names(m):
        for t in ("weakened", "default"):
            for s in m.seeds:
                out = outputs[("protocol", a, t, s)]
                rows.append(_row(kind="protocol", attack=a, defence=t, protocol="", dp="none", seed=s, **out))
    return rows


# ---------------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------------


def _stats(values: list[float]) -> tuple[float, float]:
    v = [x for x in values if isinstance(x, (int, float)) and not math.isnan(x)]
    if not v:
        return float("nan"), float("nan")
    return float(np.mean(v)), float(np.std(v))


def _fmt(mean: float, std: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _short(reason: str, n: int = 70) -> str:
    reason = reason.split(": ", 1)[-1] if reason.startswith("federation.aggregator") else reason
    return (reason[: n - 1] + "…") if len(reason) > n else reason


def aggregate(rows: list[dict[str, Any]], m: MatrixConfig) -> dict[str, Any]:
    """Mean ± std over seeds per cell; invalid/error cells keep their label."""
    pois: dict[str, Any] = {}
    for p in m.protocols:
        for a in m.attacks:
            for d in m.defences:
                cell = [r for r in rows if r["kind"] == "poisoning" and (r["attack"], r["defence"], r["protocol"]) ==
                        (a, d, p)]
                ok = [r for r in cell if r["status"] == "ok"]
                bad = [r for r in cell if r["status"] != "ok"]
                entry: dict[str, Any] = {"n_ok": len(ok), "status": "ok" if ok and not bad else (
                    bad[0]["status"] if bad else "missing")}
                if bad:
                    entry["reason"] = bad[0]["reason"]
                entry["relative_return"] = _stats([r["relative_return"] for r in ok])
                entry["final_return"] = _stats([r["final_return"] for r in ok])
                if any(r["asr"] != "" for r in ok):
                    entry["asr"] = _stats([r["asr"] for r in ok])
                    entry["clean_target_rate"] = _stats([r["clean_target_rate"] for r in ok])
                    entry["reference_asr"] = _stats([r["reference_asr"] for r in ok if r["reference_asr"] != ""])
                pois[f"{a}|{d}|{p}"] = entry
    inf: dict[str, Any] = {}
    for r in rows:
        if r["kind"] != "inference":
            continue
        key = f"{r['attack']}|{r['protocol']}|{r['dp']}|{r['metric']}"
        inf.setdefault(key, {"values": [], "chance": [], "status": r["status"], "reason": r["reason"]})
        if r["status"] == "ok":
            inf[key]["values"].append(r["value"])
            inf[key]["chance"].append(r["chance"])
    for entry in inf.values():
        entry["value"] = _stats(entry.pop("values"))
        entry["chance"] = _stats(entry.pop("chance"))
    proto: dict[str, Any] = {}
    for r in rows:
        if r["kind"] != "protocol":
            continue
        entry = proto.setdefault(f"{r['attack']}|{r['defence']}", {"runs": 0, "succeeded": 0, "errors": 0,
                                                                   "target": r["target"], "reason": r["reason"],
                                                                   "metric": r["metric"], "values": []})
        entry["runs"] += 1
        if r["status"] != "ok":
            entry["errors"] += 1
            entry["reason"] = r["reason"]
            continue
        entry["succeeded"] += int(bool(r["succeeded"]))
        if isinstance(r["value"], (int, float)) and math.isfinite(r["value"]):
            entry["values"].append(r["value"])
    for entry in proto.values():
        entry["value"] = _stats(entry.pop("values"))
    holds: dict[str, Any] = {}
    for p in m.protocols:
        for a in m.attacks:
            if a == "none":
                continue
            keep = [d for d in m.defences if pois[f"{a}|{d}|{p}"]["status"] == "ok"
                    and pois[f"{a}|{d}|{p}"]["relative_return"][0] >= m.keep_fraction]
            holds[f"{a}|{p}"] = keep
    return {"poisoning": pois, "inference": inf, "holds": holds, "protocol": proto}


def markdown(agg: dict[str, Any], m: MatrixConfig) -> str:
    """The Markdown report (tables of mean ± std over seeds)."""
    lines = [f"# Attack matrix `{m.name}`", "",
             f"Seeds {m.seeds}; {m.n_malicious} malicious client(s); final return = honest clients' mean over the "
             f"last {m.tail_rounds} rounds, relative to the honest-only FedAvg run of the same protocol and seed.", ""]
    pois = agg["poisoning"]
    for p in m.protocols:
        lines += [f"## Relative return under `{p}`", "", "| attack | " + " | ".join(m.defences) + " |",
                  "|---|" + "---|" * len(m.defences)]
        for a in m.attacks:
            cells = []
            for d in m.defences:
                e = pois[f"{a}|{d}|{p}"]
                if e["status"] in ("invalid", "error"):
                    cells.append(f"*{e['status']}: {_short(e.get('reason', ''))}*")
                else:
                    cells.append(_fmt(*e["relative_return"]))
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
    if any(a != "none" for a in m.attacks):
        lines += [f"## Defences keeping >= {m.keep_fraction:.0%} of the honest-only return", "",
                  "| attack | protocol | defences that hold |", "|---|---|---|"]
        for key, keep in agg["holds"].items():
            a, p = key.split("|")
            lines.append(f"| {a} | {p} | {', '.join(keep) if keep else '**none**'} |")
        lines.append("")
    bd = [(k, e) for k, e in pois.items() if "asr" in e]
    if bd:
        lines += ["## Backdoor success (fraction of triggered states where the global policy takes the target "
                  "action)", "", "Baselines: the same policy's target-action rate on the states without trigger, and "
                  "the success rate of the honest-only FedAvg model with the same trigger (a trigger can move a clean "
                  "policy by itself).", "",
                  "| attack | defence | protocol | success rate | target rate without trigger | honest-only model |",
                  "|---|---|---|---|---|---|"]
        for k, e in bd:
            a, d, p = k.split("|")
            lines.append(f"| {a} | {d} | {p} | {_fmt(*e['asr'])} | {_fmt(*e['clean_target_rate'])} | "
                         f"{_fmt(*e['reference_asr'])} |")
        lines.append("")
    if agg["inference"]:
        lines += ["## Inference attacks (value, chance level in brackets)", "",
                  "| attack | metric | protocol | DP | value | chance |", "|---|---|---|---|---|---|"]
        for k, e in sorted(agg["inference"].items()):
            a, p, dp, metric = k.split("|")
            if e["status"] != "ok":
                lines.append(f"| {a} | — | {p} | {dp} | *{e['status']}: {_short(e['reason'])}* | |")
            else:
                lines.append(f"| {a} | {metric} | {p} | {dp} | {_fmt(e['value'][0], e['value'][1], digits=3)} | "
                             f"{_fmt(e['chance'][0], e['chance'][1], digits=3)} |")
        lines.append("")
    if agg.get("protocol"):
        lines += ["## Protocol attacks (a malicious server or colluding clients)", "",
                  "Each attack runs against the configuration it breaks (an explicit unsafe option) and against the "
                  "default; it must succeed on the first and fail, for the reason shown, on the second.", "",
                  "| attack | target | succeeded | metric | value | reason |", "|---|---|---|---|---|---|"]
        for key, e in sorted(agg["protocol"].items(), key=lambda kv: (kv[0].split("|")[0], kv[0].split("|")[1] !=
                                                                        "weakened")):
            a, t = key.split("|")
            runs = f"{e['succeeded']}/{e['runs']}" + (f" ({e['errors']} errors)" if e["errors"] else "")
            mean, std = e["value"]
            lines.append(f"| {a} | {t}: {e['target']} | {runs} | {e['metric']} | {_fmt(mean, std, digits=3)} | "
                         f"{_short(str(e['reason']), 110)} |")
        lines.append("")
    return "\n".join(lines)


def _heatmap(ax: Any, data: np.ndarray, labels: list[list[str]], rows: list[str], cols: list[str], title: str,
             vmin: float, vmax: float, cmap: str, xlabel: str = "", ylabel: str = "") -> Any:
    masked = np.ma.masked_invalid(data)
    import matplotlib

    cm = matplotlib.colormaps[cmap].copy()
    cm = cm.with_extremes(bad="#d9d9d9")
    im = ax.imshow(masked, cmap=cm, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=7)
    return im


def plot(agg: dict[str, Any], m: MatrixConfig, out: Path) -> list[Path]:
    """Heatmaps: relative return per protocol, backdoor success, inference metrics; returns the files written.

    Drawn on :class:`matplotlib.figure.Figure` objects (no pyplot, no backend switch), so importing or
    calling this in a notebook leaves the notebook's inline backend alone.
    """
    written: list[Path] = []
    pois = agg["poisoning"]
    if m.attacks and m.defences:
        written.append(_plot_relative(pois, m, out))
    _plot_rest(agg, pois, m, out, written)
    return written


def _plot_relative(pois: dict[str, Any], m: MatrixConfig, out: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.2 + 1.1 * len(m.defences) * len(m.protocols), 1.3 + 0.45 * len(m.attacks)), dpi=110,
                 layout="constrained")
    axes = fig.subplots(1, len(m.protocols), squeeze=False)
    im = None
    for ax, p in zip(axes[0], m.protocols, strict=True):
        data = np.full((len(m.attacks), len(m.defences)), np.nan)
        labels = [["" for _ in m.defences] for _ in m.attacks]
        for i, a in enumerate(m.attacks):
            for j, d in enumerate(m.defences):
                e = pois[f"{a}|{d}|{p}"]
                if e["status"] in ("invalid", "error"):
                    labels[i][j] = e["status"]
                elif not math.isnan(e["relative_return"][0]):
                    data[i, j] = e["relative_return"][0]
                    labels[i][j] = f"{data[i, j]:.2f}"
        im = _heatmap(ax, data, labels, m.attacks, m.defences, f"return / honest-only ({p})", 0.0, 1.1, "RdYlGn",
                      xlabel="defence (aggregation rule)", ylabel="attack" if ax is axes[0][0] else "")
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    path = out / "relative_return.png"
    fig.savefig(path, bbox_inches="tight")
    return path


def _plot_rest(agg: dict[str, Any], pois: dict[str, Any], m: MatrixConfig, out: Path, written: list[Path]) -> None:
    from matplotlib.figure import Figure

    bd = [(k, e) for k, e in pois.items() if "asr" in e]
    if bd:
        keys = sorted({tuple(k.split("|")[1:]) for k, _ in bd})
        attacks = sorted({k.split("|")[0] for k, _ in bd})
        data = np.full((len(attacks), len(keys)), np.nan)
        labels = [["" for _ in keys] for _ in attacks]
        for k, e in bd:
            a, d, p = k.split("|")
            i, j = attacks.index(a), keys.index((d, p))
            data[i, j] = e["asr"][0]
            labels[i][j] = f"{e['asr'][0]:.2f}\n({e['reference_asr'][0]:.2f})"
        fig = Figure(figsize=(1.5 + 1.1 * len(keys), 1.5 + 0.5 * len(attacks)), dpi=110)
        ax = fig.subplots()
        im = _heatmap(ax, data, labels, attacks, [f"{d}/{p}" for d, p in keys],
                      "backdoor success rate (honest-only model, same trigger)", 0.0, 1.0, "Reds",
                      xlabel="defence / protocol", ylabel="attack")
        fig.colorbar(im, ax=ax, shrink=0.8)
        path = out / "backdoor.png"
        fig.savefig(path, bbox_inches="tight")
        written.append(path)
    if agg["inference"]:
        metrics = sorted({k.split("|", 3)[3] for k in agg["inference"] if k.split("|", 3)[3]})
        cols = [(p, dp) for p in m.inference_protocols for dp in m.dp]
        data = np.full((len(metrics), len(cols)), np.nan)
        labels = [["" for _ in cols] for _ in metrics]
        for k, e in agg["inference"].items():
            a, p, dp, metric = k.split("|", 3)
            if (p, dp) not in cols:
                continue
            j = cols.index((p, dp))
            if e["status"] != "ok" or metric not in metrics:
                for i in range(len(metrics)):
                    if metrics[i].startswith(a):
                        labels[i][j] = e["status"]
                continue
            i = metrics.index(metric)
            value, chance = e["value"][0], e["chance"][0]
            # colour = how far the attack beats its chance level (errors: lower is better for it)
            lower_is_better = metric.endswith(("relative_mse", "abs_error"))
            data[i, j] = (chance - value) if lower_is_better else (value - chance)
            labels[i][j] = f"{value:.2f}\n({chance:.2f})"
        fig = Figure(figsize=(2.5 + 1.2 * len(cols), 1.5 + 0.5 * len(metrics)), dpi=110)
        ax = fig.subplots()
        im = _heatmap(ax, data, labels, metrics, [f"{p}\nDP {dp}" for p, dp in cols],
                      "inference: value (chance); colour = advantage over chance", -0.5, 0.5, "coolwarm",
                      xlabel="protocol, DP placement", ylabel="inference attack: metric")
        fig.colorbar(im, ax=ax, shrink=0.8)
        path = out / "inference.png"
        fig.savefig(path, bbox_inches="tight")
        written.append(path)


def write_outputs(rows: list[dict[str, Any]], m: MatrixConfig, out: str | Path | None = None) -> Path:
    """Write cells.csv, summary.md, summary.json and the heatmaps; returns the folder.

    Without ``out`` the matrix gets a new ``<output_dir>/<name>/<timestamp>`` folder, as ``securefrl run``
    does, so a second matrix never overwrites the first.
    """
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = new_run_dir(Path(m.output_dir) / m.name)
    with open(folder / "cells.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    agg = aggregate(rows, m)
    (folder / "summary.md").write_text(markdown(agg, m))
    (folder / "summary.json").write_text(json.dumps(json_safe({"config": to_dict(m), **agg}), indent=2) + "\n")
    plot(agg, m, folder)
    return folder
