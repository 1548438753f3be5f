"""Every worked example of docs/extending.md runs: one new plug-in per kind, registered with one line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "extending.md").read_text(), flags=re.S)


def test_the_guide_has_one_example_per_kind() -> None:
    firsts = [b.splitlines()[0] for b in BLOCKS]
    assert firsts == ["# mypkg/plaintext16.py", "# mypkg/zero.py", "# mypkg/mixed.py", "# mypkg/small_ppo.py",
                      "# mypkg/reverse.py"]
    for block in BLOCKS:  # exactly one registration call per example
        assert len(re.findall(r"^\w+\.register\(|^register_attack\(", block, flags=re.M)) == 1, block[:40]


@pytest.mark.parametrize("block", BLOCKS, ids=[b.splitlines()[0].split("/")[-1] for b in BLOCKS])
def test_example_runs(block: str) -> None:
    # A fresh interpreter per example: registrations are process-wide.
    done = subprocess.run([sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
