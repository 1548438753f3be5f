"""Hopper (MuJoCo) with per-client body: leg length, body masses and foot friction.

Continuous control with an 11-dimensional state under environment heterogeneity, the open problem the
survey names; Jin et al. (2022, "Federated Reinforcement Learning with Environment Heterogeneity") vary
Hopper's leg size across clients. This is gymnasium's ``Hopper-v5`` (Erez, Tassa & Todorov 2011) whose
model is rebuilt whenever a body parameter changes:

* ``leg_length`` (shin, 0.5 m by default) is edited in the MJCF before compiling, keeping the knee and
  the ankle attached (the leg capsule, the knee joint and the foot body move together) and letting
  MuJoCo recompute the leg's mass and inertia from its new volume;
* ``torso_mass`` and ``thigh_mass`` scale that body's mass and inertia tensor (a uniform change of density);
* ``foot_friction`` sets the sliding friction of the foot against the floor.

Needs the optional extra ``securefrl[mujoco]`` (``gymnasium[mujoco]``); importing this module without it
raises gymnasium's ``DependencyNotInstalled``, and the ``hopper`` family is refused at config time.
"""

from __future__ import annotations

import re
from typing import Any

import mujoco  # type: ignore[import-untyped]
import numpy as np
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv

__all__ = ["HeterogeneousHopperEnv"]

DEFAULT_LEG_LENGTH = 0.5
"""Shin length of the stock model [m] (capsule half-length 0.25)."""


def hopper_xml(path: str, leg_length: float) -> str:
    """The stock hopper MJCF with the shin ``leg_length`` long, knee and ankle kept attached.

    In the stock file the leg body sits 0.45 + L below the thigh frame (L = half the shin), its knee
    joint at +L, the capsule of half-length L on its origin and the foot body 0.1 + L below it.
    """
    with open(path, encoding="utf-8") as f:
        xml = f.read()
    half = 0.5 * leg_length
    replacements = [
        (r'<body name="leg" pos="0 0 -0.70000000000000007">', f'<body name="leg" pos="0 0 {-(0.45 + half)!r}">'),
        (r'name="leg_joint" pos="0 0 0.25"', f'name="leg_joint" pos="0 0 {half!r}"'),
        (r'name="leg_geom" size="0.04 0.25"', f'name="leg_geom" size="0.04 {half!r}"'),
        (r'<body name="foot" pos="0.13 0 -0.35">', f'<body name="foot" pos="0.13 0 {-(0.1 + half)!r}">'),
    ]
    for old, new in replacements:
        xml, count = re.subn(re.escape(old), new, xml)
        if count != 1:
            raise RuntimeError(f"unexpected hopper.xml: {old!r} found {count} times (gymnasium changed the model?)")
    return xml


class HeterogeneousHopperEnv(HopperEnv):
    """``Hopper-v5`` whose body parameters are attributes: setting one rebuilds the MuJoCo model.

    The new body takes effect at the next ``reset`` (as for every family), since the rebuilt model
    starts from a fresh simulation state.
    """

    _BODY_PARAMS = ("leg_length", "torso_mass", "thigh_mass", "foot_friction")

    def __init__(self, **kwargs: Any) -> None:
        self._body: dict[str, float] = {"leg_length": DEFAULT_LEG_LENGTH}
        super().__init__(**kwargs)
        # the stock values, read from the compiled stock model
        m = self.model
        self._ids = {name: mujoco.mj_name2id(m, obj, name) for name, obj in (
            ("torso", mujoco.mjtObj.mjOBJ_BODY), ("thigh", mujoco.mjtObj.mjOBJ_BODY),
            ("foot_geom", mujoco.mjtObj.mjOBJ_GEOM))}
        self._stock = {"torso_mass": float(m.body_mass[self._ids["torso"]]),
                       "thigh_mass": float(m.body_mass[self._ids["thigh"]]),
                       "foot_friction": float(m.geom_friction[self._ids["foot_geom"], 0])}
        self._body.update(self._stock)

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        model = mujoco.MjModel.from_xml_string(hopper_xml(self.fullpath, self._body["leg_length"]))
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        if hasattr(self, "_stock"):  # after __init__: apply masses and friction to the fresh model
            for body in ("torso", "thigh"):
                factor = self._body[f"{body}_mass"] / self._stock[f"{body}_mass"]
                model.body_mass[self._ids[body]] *= factor
                model.body_inertia[self._ids[body]] *= factor
            model.geom_friction[self._ids["foot_geom"], 0] = self._body["foot_friction"]
        return model, mujoco.MjData(model)

    def _rebuild(self) -> None:
        self.model, self.data = self._initialize_simulation()
        self.init_qpos = self.data.qpos.ravel().copy()
        self.init_qvel = self.data.qvel.ravel().copy()
        renderer = getattr(self, "mujoco_renderer", None)
        if renderer is not None:  # the renderer holds the old model; build it again on the new one
            renderer.close()
            renderer.model, renderer.data = self.model, self.data

    def _get(self, name: str) -> float:
        return self._body[name]

    def _set(self, name: str, value: float) -> None:
        value = float(value)
        if not np.isfinite(value) or value <= 0.0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
        self._body[name] = value
        self._rebuild()

    leg_length = property(lambda self: self._get("leg_length"), lambda self, v: self._set("leg_length", v),
                          doc="Shin length [m].")
    torso_mass = property(lambda self: self._get("torso_mass"), lambda self, v: self._set("torso_mass", v),
                          doc="Torso mass [kg].")
    thigh_mass = property(lambda self: self._get("thigh_mass"), lambda self, v: self._set("thigh_mass", v),
                          doc="Thigh mass [kg].")
    foot_friction = property(lambda self: self._get("foot_friction"), lambda self, v: self._set("foot_friction", v),
                             doc="Sliding friction coefficient of the foot.")
