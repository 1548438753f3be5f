"""Every tutorial notebook executes top to bottom on small settings (SECUREFRL_SMALL=1), with the notebook's
own (inline) matplotlib backend, and is saved in the repository with its outputs."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no tutorial"


def _images(nb) -> int:
    code = [c for c in nb.cells if c.cell_type == "code"]
    return sum("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))


@pytest.mark.notebooks  # minutes of kernels: `make test` runs these as its second step (pytest -m notebooks)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_and_its_plots_render_inline(path, tmp_path, monkeypatch):
    # No MPLBACKEND: the kernel picks the inline backend as Jupyter does, so a library module that switched the
    # backend globally (matplotlib.use("Agg")) would make plt.show() draw nothing and fail the image check.
    monkeypatch.setenv("SECUREFRL_SMALL", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    shows = sum(c.source.count("plt.show()") for c in nb.cells if c.cell_type == "code")
    assert _images(nb) >= shows, f"{path.name}: {shows} plt.show() calls but {_images(nb)} images rendered"
    assert os.environ["SECUREFRL_SMALL"] == "1"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_saved_with_its_outputs(path):
    """Read on a code-hosting site, a notebook shows its results: every code cell was run and saved."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{path.name} has unexecuted cells"
    errors = [o for c in code for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    if any("plt.show()" in c.source for c in code):
        assert _images(nb) > 0
