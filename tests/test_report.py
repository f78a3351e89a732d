"""The HTML/Markdown report: it gathers real evaluation results, shows the numbers they hold, embeds
the plots and renders the documents where the systems disagree with displaCy."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import spacy

from spacy_medllm.cli import main as cli
from spacy_medllm.evaluation import evaluate as ev
from spacy_medllm.evaluation import report as rp

# Three Estonian documents; the two rulers below get different ones wrong.
GOLD = [
    {
        "id": "a",
        "text": "Patsient võttis aspiriini ja tekkis lööve.",
        "entities": [
            {"start": 16, "end": 25, "label": "DRUG"},
            {"start": 36, "end": 41, "label": "ADVERSE_EVENT"},
        ],
    },
    {
        "id": "b",
        "text": "Metformiin põhjustas iiveldust.",
        "entities": [
            {"start": 0, "end": 10, "label": "DRUG"},
            {"start": 21, "end": 30, "label": "ADVERSE_EVENT"},
        ],
    },
    {"id": "c", "text": "Kontrollvisiit kuu aja pärast.", "entities": []},
]
RULERS = {
    "drugs-only": [
        {"label": "DRUG", "pattern": "aspiriini"},
        {"label": "DRUG", "pattern": "Metformiin"},
    ],
    "everything": [
        {"label": "DRUG", "pattern": "aspiriini"},
        {"label": "ADVERSE_EVENT", "pattern": "lööve"},
        {"label": "ADVERSE_EVENT", "pattern": "Metformiin"},
        {"label": "ADVERSE_EVENT", "pattern": "iiveldust"},
    ],
}


@pytest.fixture(scope="module")
def reports_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reports")
    corpus = root / "et.jsonl"
    corpus.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in GOLD), "utf8")
    pipelines = []
    for name, patterns in RULERS.items():
        nlp = spacy.blank("et")
        nlp.add_pipe("entity_ruler").add_patterns(patterns)
        pipelines.append((name, nlp))
    # Two result files on the same documents, as the baselines and the LLM steps write them.
    ev.evaluate_corpus(pipelines[:1], "et-dev", "dev", root / "baselines", path=corpus)
    ev.evaluate_corpus(pipelines[1:], "et-dev", "dev", root / "medllm", path=corpus)
    (root / "distil").mkdir()
    (root / "distil" / "distillation-et.md").write_text(
        "# Distillation\n\n| System | F1 |\n|---|---|\n| student | 0.5 |\n", "utf8"
    )
    (root / "not-a-report.json").write_text("{broken", "utf8")
    (root / "baselines" / "broken.json").write_text("{broken", "utf8")
    return root


@pytest.fixture(scope="module")
def built(reports_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    paths = rp.build_report(reports_dir, out, samples=2)
    return paths, paths["html"].read_text("utf8"), paths["md"].read_text("utf8")


def test_both_systems_of_one_corpus_share_a_column_with_their_f1(reports_dir, built):
    _, _, md = built
    results = {
        s["name"]: s["strict"]["micro"]["f1"]
        for folder in ("baselines", "medllm")
        for s in json.loads((reports_dir / folder / "et-dev-dev.json").read_text("utf8"))["systems"]
    }
    assert results["drugs-only"] != results["everything"]
    rows = [
        line
        for line in md.splitlines()
        if line.startswith("| drugs-only") or line.startswith("| everything")
    ]
    assert len(rows) == 2
    for row in rows:
        name = row.split("|")[1].strip()
        assert row.split("|")[2].strip() == f"{results[name]:.3f}"
    header = next(line for line in md.splitlines() if line.startswith("| System"))
    assert header.count("et-dev") == 1


def test_html_is_self_contained_with_embedded_png_plots(built):
    paths, page, _ = built
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert images, "the F1 against words/s plot is embedded"
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert not re.search(r'src="(?!data:)', page), "no external assets"
    assert (paths["html"].parent / "report_f1_vs_speed.png").is_file()


def test_extra_sections_are_included_under_the_reports_heading(built):
    _, page, md = built
    assert "## Distillation: teacher and students: et" in md
    assert "# Distillation\n" not in md  # the section file's own top heading is replaced
    assert "<td>student</td>" in page  # its Markdown table became an HTML table


def test_disputed_documents_are_rendered_with_displacy(built):
    _, page, md = built
    # Document "b" is where both systems err (one misses the event, one mislabels the drug), so it
    # comes first; "c" has no spans anywhere and is never shown.
    disputed = re.findall(r"document (\w)</h4>", page)
    assert disputed[0] == "b" and "c" not in disputed
    block = page[page.index("document b</h4>") :]
    block = block[: block.index('<div class="doc">') if '<div class="doc">' in block else None]
    assert block.count('class="entities"') == 3  # gold, drugs-only, everything
    assert "Metformiin" in block and "iiveldust" in block
    assert "et-dev (dev), document b" in md


def test_pick_samples_orders_by_disagreement_and_skips_agreement():
    report = {
        "systems": [
            {
                "name": "x",
                "docs": [
                    {"id": "1", "gold": [[0, 3, "A"]], "pred": [[0, 3, "A"]]},
                    {"id": "2", "gold": [[0, 3, "A"], [4, 6, "B"]], "pred": [[0, 2, "A"]]},
                    {"id": "3", "gold": [[0, 3, "A"]], "pred": []},
                ],
            },
            {
                "name": "y",
                "docs": [
                    {"id": "1", "gold": [[0, 3, "A"]], "pred": [[0, 3, "A"]]},
                    {"id": "2", "gold": [[0, 3, "A"], [4, 6, "B"]], "pred": [[0, 3, "A"]]},
                    {"id": "3", "gold": [[0, 3, "A"]], "pred": [[0, 3, "A"]]},
                ],
            },
        ]
    }
    samples = rp.pick_samples(report)
    assert [s["id"] for s in samples] == ["2", "3"]
    assert samples[0]["systems"]["x"] == [(0, 2, "A")]
    assert rp.pick_samples(report, 1)[0]["id"] == "2"


def test_same_system_on_the_same_documents_is_not_counted_twice(reports_dir):
    first = json.loads((reports_dir / "baselines" / "et-dev-dev.json").read_text("utf8"))
    merged = rp.merge_by_corpus([first, first])
    assert len(merged) == 1 and [s["name"] for s in merged[0]["systems"]] == ["drugs-only"]


def test_a_summary_stands_in_only_for_a_missing_full_report(reports_dir, tmp_path):
    # the fixture's folders hold both files: only the full ones (with the documents) are read
    found = rp.find_evaluation_reports(reports_dir)
    assert [p.relative_to(reports_dir).as_posix() for p in found] == [
        "baselines/et-dev-dev.json",
        "medllm/et-dev-dev.json",
    ]
    # a fresh clone keeps only the summaries: the numbers are reported, no document is rendered
    clone = tmp_path / "clone"
    for folder in ("baselines", "medllm"):
        (clone / folder).mkdir(parents=True)
        summary = reports_dir / folder / "et-dev-dev.summary.json"
        (clone / folder / summary.name).write_bytes(summary.read_bytes())
    found = rp.find_evaluation_reports(clone)
    assert [p.name for p in found] == ["et-dev-dev.summary.json"] * 2
    paths = rp.build_report(clone, tmp_path / "out", samples=2)
    markdown = paths["md"].read_text("utf8")
    assert "| drugs-only |" in markdown and "| everything |" in markdown
    assert 'class="entities"' not in paths["html"].read_text("utf8")
    full = rp.build_report(reports_dir, tmp_path / "full", samples=2)
    assert 'class="entities"' in full["html"].read_text("utf8")


def test_an_empty_reports_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results"):
        rp.build_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="No reports folder"):
        rp.build_report(tmp_path / "missing")


def test_command_line_writes_into_the_reports_folder(reports_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reports_dir, copy)
    assert cli(["report", str(copy), "--samples", "0"]) == 0
    page = (copy / "report.html").read_text("utf8")
    assert "displacy" not in page.lower() and 'class="entities"' not in page
    assert "report.html" in capsys.readouterr().out


def test_typer_cli_report_command(reports_dir, tmp_path):
    from typer.testing import CliRunner

    from spacy_medllm.cli import app

    out = tmp_path / "cli-out"
    result = CliRunner().invoke(app, ["report", str(reports_dir), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "drugs-only" in (out / "report.md").read_text("utf8")
