"""Architecture guards: import layering, no import cycles, a config that imports no torch, one registry type,
no isinstance on concrete agents outside securefrl/agents, one checkpoint mechanism."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("securefrl", "protocols", "attacks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top_level_imports(path: Path, module: str) -> set[str]:
    """Modules imported when ``module`` is imported: module-level statements, not TYPE_CHECKING blocks or functions."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")
                    base = base if is_pkg else base[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
            elif isinstance(node, ast.If):
                test = node.test
                if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                    continue
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        edges: set[str] = set()
        for imp in _top_level_imports(path, mod):
            parts = imp.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c imports a, a.b and a.b.c
                name = ".".join(parts[:i])
                if name in files and name != mod and not mod.startswith(name + "."):
                    edges.add(name)
        graph[mod] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles_among_the_packages() -> None:
    # Act: module-level imports (what runs at import time), as a graph over every module of the three packages.
    cycles = _cycles(_graph())
    # Assert
    assert cycles == [], f"import cycles: {cycles}"


def test_layers_only_import_downwards() -> None:
    graph = _graph()
    for mod, edges in graph.items():
        if mod.startswith("protocols"):
            assert not {e for e in edges if e.startswith(("securefrl", "attacks"))}, mod
        if mod.startswith("securefrl"):
            assert not {e for e in edges if e.startswith("attacks")}, mod


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("overrides", [[], ["protocol.name=ckks", "personalization.method=ditto",
                                            "attack.name=sign_flip", "attack.n_malicious=1",
                                            "federation.aggregator=fedavg", "privacy.placement=local"]])
def test_loading_a_config_imports_no_torch(overrides: list[str]) -> None:
    # Arrange: a fresh interpreter, so nothing else has imported torch yet. (CKKS loads TenSEAL: the protocol
    # class declares its capabilities.)
    code = (f"import sys; import securefrl.config as c; c.load_config(overrides={overrides!r}); "
            "bad = sorted(m for m in ('torch', 'opacus', 'securefrl.federation', 'securefrl.agents.ppo') "
            "if m in sys.modules); print(bad); sys.exit(1 if bad else 0)")
    # Act
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    # Assert
    assert done.returncode == 0, done.stdout + done.stderr


def _concrete_agent_isinstance(path: Path) -> list[int]:
    """Lines of ``path`` that test ``isinstance(..., <SomeAgent>)`` against a concrete agent class."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance" \
                and len(node.args) == 2:
            names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            names |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
            if any(n.endswith("Agent") and n != "Agent" for n in names):
                lines.append(node.lineno)
    return lines


def test_no_code_outside_the_agents_tests_for_a_concrete_agent_class() -> None:
    # Agents declare capabilities (policy_logits, q_values, ...): attacks and executors read those instead.
    offenders = {}
    for package in ("securefrl", "attacks", "protocols"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.is_relative_to(ROOT / "securefrl" / "agents"):
                continue
            if found := _concrete_agent_isinstance(path):
                offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}
    assert _concrete_agent_isinstance(ROOT / "tests" / "securefrl" / "test_agents.py")  # the finder finds one


def test_one_checkpoint_mechanism_for_every_agent() -> None:
    # Only the agent base class writes state_dict / load_state_dict; each agent declares what it holds.
    from securefrl.agents import AGENTS
    from securefrl.agents.base import Agent

    for name in AGENTS.names():
        cls = AGENTS.get(name)
        assert cls.state_dict is Agent.state_dict and cls.load_state_dict is Agent.load_state_dict, name
        assert cls.checkpointed, name
