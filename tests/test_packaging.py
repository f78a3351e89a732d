"""`pip install .` into a fresh virtual environment: entry points work, torch is not needed."""

from __future__ import annotations

import json
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent(
    """
    import importlib.util, json, sys
    import spacy
    from spacy.util import registry
    # Every entry point of pyproject.toml resolves through spaCy's registry, without torch.
    for group, names in json.loads(sys.argv[1]).items():
        if group.startswith("spacy_llm_"):
            # spacy-llm's registries (the `data` extra) exist once spacy-llm is imported; a
            # plain install has no spacy-llm, and then nothing may need them.
            if importlib.util.find_spec("spacy_llm") is None:
                continue
            import spacy_llm  # noqa: F401 - creates registry.llm_models / llm_tasks
        table = (
            registry._entry_point_factories
            if group == "spacy_factories"
            else getattr(registry, group.removeprefix("spacy_"))
        )
        for name in names:
            assert callable(table.get(name)), (group, name)
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


def spacy_entry_points() -> dict[str, list[str]]:
    """The spaCy registry entry points that pyproject.toml declares, by group."""
    with open(REPO / "pyproject.toml", "rb") as file_:
        groups = tomllib.load(file_)["project"]["entry-points"]
    return {group: list(names) for group, names in groups.items() if group.startswith("spacy_")}


def test_every_registered_function_has_an_entry_point():
    from spacy.util import registry

    # cli imports every module that registers something; spacy_llm_models fills spacy-llm's.
    from spacy_medllm import cli  # noqa: F401
    from spacy_medllm.pipeline import spacy_llm as spacy_llm_models  # noqa: F401

    declared = spacy_entry_points()
    assert {"spacy_factories", "spacy_misc", "spacy_scorers"} <= set(declared)
    tables = [("spacy_misc", registry.misc), ("spacy_scorers", registry.scorers)]
    tables += [("spacy_llm_models", registry.llm_models), ("spacy_llm_tasks", registry.llm_tasks)]
    for group, table in tables:
        ours = {name for name in table.get_all() if name.startswith("medllm.")}
        assert ours <= set(declared[group]), (group, ours - set(declared[group]))


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
        [str(python), "-c", CHECK, json.dumps(spacy_entry_points())],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TORCH_INSTALLED False" in result.stdout
    assert "TORCH_IMPORTED False" in result.stdout
