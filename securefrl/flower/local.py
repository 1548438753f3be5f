"""A Flower deployment on this machine: one SuperLink and one SuperNode per client, as separate processes.

What the README's command sequence does by hand, for tests and benchmarks: every process binds to
127.0.0.1 only, lives in its own process group (so its ClientApp/SuperExec children go with it), is given
a bounded time, and is always terminated on exit. ``FLWR_HOME`` points at a private folder, so the user's
own Flower configuration is neither read nor changed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from securefrl.flower.tls import TLSFiles, write_tls_files

#: What ``flwr run``'s log says when the simulation engine's Ray node missed Ray's startup deadline.
RAY_STARTUP_TIMEOUT = "The current node timed out during startup"
#: What it says when the simulation runtime crashed (``flwr run`` still exits 0).
SIMULATION_FAILED = "Simulation Runtime crashed"


class RayStartupError(RuntimeError):
    """The simulation engine's Ray node did not register in time (machine overloaded); nothing ran."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    """A Flower console script next to this interpreter (the venv's), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install the Flower extra (pip install 'securefrl[flower]')")
    return found


class LocalDeployment:
    """Start a SuperLink and ``n_supernodes`` SuperNodes (``partition-id=i``) on localhost; ``run`` an app.

    Use as a context manager. ``kill_supernode(i)`` ends SuperNode ``i`` (a client dropping out). With
    ``simulation=True`` the SuperLink runs Flower's simulation engine instead (``n_supernodes`` virtual
    clients in Ray actors, ``num_cpus`` of them at a time) and no SuperNode process is started.

    ``tls=True`` (the default) runs every link with TLS under a throwaway CA written to ``WORKDIR/tls``
    (:mod:`securefrl.flower.tls`): the SuperLink serves with its certificate, each SuperNode and ``flwr run``
    verify it against ``ca.crt``. ``tls=False`` is Flower's ``--insecure`` mode: plaintext on 127.0.0.1, for
    local testing only.
    """

    def __init__(self, n_supernodes: int, workdir: str | Path, env: dict[str, str] | None = None,
                 enrolment: str | Path | None = None, simulation: bool = False, num_cpus: int = 2,
                 tls: bool = True) -> None:
        self.n = n_supernodes
        self.workdir = Path(workdir)
        self.home = self.workdir / "flwr-home"
        self.logs = self.workdir / "logs"
        self.port = free_port()
        path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
        self.env = {**os.environ, **(env or {}), "FLWR_HOME": str(self.home), "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "FLWR_TELEMETRY_ENABLED": "0", "PATH": path}
        self.enrolment = Path(enrolment).resolve() if enrolment is not None else None
        self.simulation, self.num_cpus = simulation, num_cpus
        self.tls: TLSFiles | None = None
        if tls:
            self.tls = write_tls_files(self.workdir.resolve() / "tls")
        self.superlink: subprocess.Popen[bytes] | None = None
        self.supernodes: dict[int, subprocess.Popen[bytes]] = {}
        self._runs = 0
        self._run_logs: dict[int, Path] = {}

    # -- processes ---------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "wb")
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
                                start_new_session=True)

    def start(self) -> LocalDeployment:
        self.home.mkdir(parents=True, exist_ok=True)
        options = ""
        if self.simulation:
            options = (f"options.num-supernodes = {self.n}\n"
                       f"options.backend.init-args.num-cpus = {self.num_cpus}\n"
                       "options.backend.client-resources.num-cpus = 1\n")
        link = f'root-certificates = "{self.tls.ca}"' if self.tls is not None else "insecure = true"
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "local-deployment"\n\n'
            f'[superlink.local-deployment]\naddress = "127.0.0.1:{self.port}"\n{link}\n{options}')
        server_tls = (["--ssl-ca-certfile", str(self.tls.ca), "--ssl-certfile", str(self.tls.cert),
                       "--ssl-keyfile", str(self.tls.key)] if self.tls is not None else ["--insecure"])
        self.superlink = self._spawn("superlink", [
            _bin("flower-superlink"), *server_tls, "--host", "127.0.0.1", "--port", str(self.port),
            "--disable-runtime-dependency-installation", "--database", str(self.workdir / "superlink.db"),
            *(["--simulation"] if self.simulation else [])])
        self._wait_port(self.port, 60.0)
        if not self.simulation:
            for i in range(self.n):
                self.start_supernode(i)
        return self

    def start_supernode(self, i: int) -> None:
        node_config = f"partition-id={i} num-partitions={self.n}"
        if self.enrolment is not None:  # SecAgg: this client's own identity key and the registry it trusts
            node_config += (f" identity-key='{self.enrolment / f'client-{i}.key'}'"
                            f" registry='{self.enrolment / 'registry.json'}'")
        client_tls = ["--root-certificates", str(self.tls.ca)] if self.tls is not None else ["--insecure"]
        self.supernodes[i] = self._spawn(f"supernode-{i}", [
            _bin("flower-supernode"), *client_tls, "--superlink", f"127.0.0.1:{self.port}",
            "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", node_config])

    def _wait_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.superlink is not None and self.superlink.poll() is not None:
                raise RuntimeError(f"flower-superlink exited; see {self.logs / 'superlink.log'}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"flower-superlink did not listen on 127.0.0.1:{port} within {timeout:.0f} s")

    def kill_supernode(self, i: int) -> None:
        _stop(self.supernodes.pop(i), sig=signal.SIGKILL)

    def submit(self, app_dir: str | Path) -> subprocess.Popen[bytes]:
        """Start ``flwr run APP local-deployment --stream`` (it streams the ServerApp's log until the run ends).

        Each submission logs to its own ``logs/flwr-run-<k>.log`` (several runs share one deployment).
        """
        self._runs += 1
        name = f"flwr-run-{self._runs}"
        proc = self._spawn(name, [_bin("flwr"), "run", str(app_dir), "local-deployment", "--stream"])
        self._run_logs[proc.pid] = self.logs / f"{name}.log"
        return proc

    def wait(self, proc: subprocess.Popen[bytes], timeout: float = 600.0) -> str:
        """Wait for a submitted run; its log (raises if ``flwr run`` fails or the time runs out)."""
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise TimeoutError(f"flwr run did not finish within {timeout:.0f} s; logs in {self.logs}") from None
        out = self._run_logs[proc.pid].read_text(errors="replace")
        if RAY_STARTUP_TIMEOUT in out:  # whatever the exit code: nothing ran
            raise RayStartupError(f"the simulation engine's Ray node did not start in time:\n{out[-1500:]}")
        if code != 0:
            raise RuntimeError(f"flwr run exited with {code}:\n{out[-3000:]}")
        if SIMULATION_FAILED in out:  # flwr run exits 0 even when the simulation runtime crashed
            raise RuntimeError(f"the simulation runtime failed:\n{out[-3000:]}")
        return out

    def run(self, app_dir: str | Path, timeout: float = 600.0, retries: int = 2) -> str:
        """Submit the app and wait for the run to end; its log.

        Ray gives its node a fixed 30 s to register, which a loaded machine can miss; such a run never started
        a round, so it is submitted again (up to ``retries`` times).
        """
        for attempt in range(retries + 1):
            try:
                return self.wait(self.submit(app_dir), timeout)
            except RayStartupError:
                if attempt == retries:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        for proc in self.supernodes.values():
            _stop(proc)
        self.supernodes = {}
        if self.superlink is not None:
            _stop(self.superlink)
            self.superlink = None

    def __enter__(self) -> LocalDeployment:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Flower's SuperExec starts its own session, so a process group is not enough)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """End ``proc``, its process group and every descendant (SuperExec, ServerApp and ClientApp processes)."""
    tree = _descendants(proc.pid) if Path("/proc").is_dir() else []
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    _signal(tree, sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    for pid in [proc.pid, *tree]:  # whatever did not go on the polite signal
        try:
            os.killpg(pid, signal.SIGKILL) if pid == proc.pid else os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
