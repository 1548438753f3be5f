"""Every command in README.md runs as written (on tiny budgets) and does what the README says it does.

The README's ```bash blocks are parsed; each ``securefrl`` command runs in-process through
:func:`securefrl.cli.main`, in README order, in a scratch folder (so ``results/`` is the scratch one).
Budgets shrink: rounds to at most 2 (``--stop-after`` to 1), 32 local steps, one evaluation episode,
2 clients unless the command sets clients or malicious ones. Commands that need other machines (Ray
cluster) or build the virtualenv (make, pip) are listed in ``SKIPPED`` with the reason. The Python
blocks run with the same tiny budgets appended to every ``load_config``.
"""

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SKIPPED = {
    "make": "builds the virtualenv; the test runs inside it",
    "pip": "installs packages",
    "ray": "starts Ray cluster nodes",
    ".venv/bin/python": "runs a benchmark script: long learning runs, measured by benchmarks/, not tested here",
    "RAY_ADDRESS=HEAD_IP:6379": "needs a Ray cluster at HEAD_IP",
}
TINY_SWEEP = ["--seeds", "0"]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def readme_commands() -> list[list[str]]:
    """Every command line of the README's bash blocks (continuations joined, comments dropped)."""
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def _set_value(words: list[str], key: str) -> str | None:
    for i, w in enumerate(words[:-1]):
        if w in ("--set", "-s") and words[i + 1].startswith(key + "="):
            return words[i + 1].split("=", 1)[1]
    return None


def shrink(words: list[str]) -> list[str]:
    """The command with tiny budgets (only what it does not set itself)."""
    sub = words[0]
    out = []
    for i, w in enumerate(words):
        prev = words[i - 1] if i else ""
        if prev in ("--set", "-s") and w.startswith("federation.rounds="):
            w = f"federation.rounds={min(2, int(w.split('=')[1]))}"
        if prev == "--stop-after":
            w = "1"
        out.append(w)
    if sub == "attack-matrix":
        if "--list" in words or "--describe" in words:
            return out
        return [*out, "--set", "base.federation.rounds=1", "--set", "base.federation.local_steps=32",
                "--set", "tail_rounds=1", "--set", "seeds=[0]", "-q"]
    if sub == "speedup":  # later options win: one seed, K = 1, a few gradient-mode rounds
        return [*out, "--ks", "1", "--modes", "gradient", "--seeds", "0", "--sweep", "--client", "1x16:1",
                "--eval-every", "48", "--budget-k1", "48"]
    if sub not in ("run", "sweep") or "--resume" in words:
        return out
    tiny = ["federation.local_steps=32", "federation.eval_episodes=1"]
    if _set_value(words, "federation.rounds") is None:
        tiny.append("federation.rounds=1")
    if _set_value(words, "federation.n_clients") is None and _set_value(words, "attack.n_malicious") is None:
        tiny.append("federation.n_clients=2")
    extra = [x for t in tiny for x in ("--set", t)]
    if sub == "sweep":
        extra += TINY_SWEEP
    return [*out, *extra, *(["-q"] if sub == "run" else [])]


def test_readme_has_commands_for_every_subcommand():
    subs = {w[1] if w[0].endswith("securefrl") and len(w) > 1 else w[0] for w in readme_commands()}
    for sub in ("run", "runs", "compare", "evaluate", "sweep", "config", "envs", "attack-matrix", "--version"):
        assert sub in subs, f"README shows no `securefrl {sub}`"


def test_every_readme_command_runs_as_written(tmp_path, monkeypatch, capsys):
    from securefrl.cli import main

    monkeypatch.chdir(tmp_path)
    toml = next(b for b in _blocks("toml"))
    (tmp_path / "my.toml").write_text(toml)  # the README's `--config my.toml` example file
    ran = 0
    for words in readme_commands():
        if words[0] in SKIPPED:
            continue
        assert words[0].endswith("securefrl"), f"README command not covered by this test: {words}"
        argv = shrink(words[1:])
        if argv == ["--version"]:
            with pytest.raises(SystemExit) as info:
                main(argv)
            assert info.value.code == 0
            continue
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 0, f"`{shlex.join(words)}` failed (run as {argv}):\n{err[-2000:]}"
        _check_claim(argv, out, tmp_path)
        ran += 1
    assert ran >= 20


def _check_claim(argv: list[str], out: str, root: Path) -> None:
    """What the README says each kind of command shows."""
    sub = argv[0]
    if sub == "run" and "--out" in argv:
        target = root / argv[argv.index("--out") + 1]
        assert (target / "summary.json").is_file() and (target / "rounds.csv").is_file()
    elif sub == "run" and "--resume" in argv and _set_value(argv, "federation.rounds"):
        from securefrl.results import read_jsonl

        run = root / argv[argv.index("--resume") + 1]
        assert len(read_jsonl(run / "rounds.jsonl")) == int(_set_value(argv, "federation.rounds"))  # extended
    elif sub == "runs":
        assert "final" in out or "no runs" in out
    elif sub == "compare":
        assert "final" in out and "compare.png" in out
    elif sub == "evaluate":
        assert "returns:" in out and "mean" in out
        if "--video" in argv:
            assert (root / argv[argv.index("--video") + 1]).stat().st_size > 1000
    elif sub == "config":
        expected = {"--agent": "agent.params.", "--protocol": "protocol.params."}
        assert next((v for k, v in expected.items() if k in argv), "federation.rounds") in out
    elif sub == "sweep":
        assert "no DP" in out and "epsilon" in out


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    import securefrl.config

    monkeypatch.chdir(tmp_path)
    real = securefrl.config.load_config

    def tiny_load_config(path=None, overrides=None, base=None):
        small = ["federation.rounds=1", "federation.local_steps=32", "federation.eval_episodes=1"]
        return real(path, [*(overrides or []), *small], base)

    monkeypatch.setattr(securefrl.config, "load_config", tiny_load_config)
    blocks = _blocks("python")
    assert len(blocks) >= 2
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})  # the README's own examples
    assert list(Path("results/demo").iterdir())
