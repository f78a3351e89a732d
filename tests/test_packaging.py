"""`pip install .` into a fresh virtual environment: entry points work, torch is not needed."""

from __future__ import annotations

import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent(
    """
    import importlib.util, sys
    import spacy
    from spacy.util import registry
    # Entry points alone (no import of spacy_medllm by us) make the factory and functions known.
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("medllm_ner", config={"labels": ["DRUG", "ADVERSE_EVENT"]})
    for name in ("medllm.HFGenerator.v1", "medllm.OpenAIGenerator.v1", "medllm.PromptTemplate.v1"):
        registry.misc.get(name)
    registry.scorers.get("medllm.ner_scorer.v1")
    assert ner.labels == ("DRUG", "ADVERSE_EVENT"), ner.labels
    doc = nlp("   ")  # an empty document is handled without a model
    assert doc._.medllm["medllm_ner"]["skipped"] == "empty document"
    print("TORCH_INSTALLED", importlib.util.find_spec("torch") is not None)
    print("TORCH_IMPORTED", "torch" in sys.modules)
    """
)


@pytest.mark.slow
def test_pip_install_into_fresh_venv_registers_entry_points_without_torch(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(REPO)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    result = subprocess.run(
        [str(python), "-c", CHECK], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TORCH_INSTALLED False" in result.stdout
    assert "TORCH_IMPORTED False" in result.stdout
