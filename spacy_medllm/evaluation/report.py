"""The project report: every results file of a run gathered into one HTML page and a Markdown file.

`build_report(reports_dir, output)` reads what the workflow's steps wrote under `training/reports`
and writes `report.md` and a self-contained `report.html` (plots embedded, no external assets):

- **Systems across corpora**: every per-corpus evaluation (`evaluate.evaluate_corpus` JSON: a
  "corpus" and "systems" with strict scores) combined into one table (rows = systems, columns =
  corpora, cells = strict F1, and words/s) and the F1 against words/s plot.
- **Sections of the other steps**, each included when its Markdown file exists (`<stem>.md` or
  variants `<stem>-<name>.md`): the seed benchmark, generation speed, constrained decoding,
  annotators, distillation, ... (see `SECTIONS`), with the PNG plots of the same stem.
- **Where the systems disagree**: displaCy renderings (gold, then each system) of the documents on
  which the systems' entities differ most from gold and from each other. The texts come from the
  corpus (the results files hold offsets only); a corpus that is not on this machine is named
  and skipped.

Nothing here computes a score: it only presents what the steps measured, so the report can be
rebuilt at any time (`python -m spacy_medllm report`) without touching a model.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("spacy_medllm")

# (file stem, title) of the sections included when `<stem>*.md` exists in the reports folder.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("seed_benchmark", "Seed adverse-event e-mail benchmark"),
    ("speed", "Generation speed"),
    ("constrained", "Constrained and grounded decoding"),
    ("annotators", "LLM annotators against known gold"),
    ("distillation", "Distillation: teacher and students"),
    ("estonian", "Estonian"),
    ("workflow_times", "How long each step took"),
)
EVALUATION_FOLDERS = ("baselines", "evaluation", "medllm")
# Where section files are looked for: the reports folder itself, and the distillation reports.
SECTION_FOLDERS = (".", "distil")
DEFAULT_SAMPLES = 4
MAX_SAMPLE_CHARS = 1200

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; display: block;
        overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; }
.doc { border: 1px solid #ddd; border-radius: 4px; padding: 0.5em 1em; margin: 0.5em 0; }
.doc h4 { margin: 0.2em 0; font-size: 0.9em; color: #555; }
nav li { margin: 0.1em 0; }
"""


def is_evaluation_report(data: Any) -> bool:
    """Whether a JSON document is an `evaluate_corpus` report (a corpus, systems with scores)."""
    return (
        isinstance(data, Mapping)
        and isinstance(data.get("corpus"), str)
        and isinstance(data.get("systems"), list)
        and all(isinstance(s, Mapping) and "strict" in s and "speed" in s for s in data["systems"])
    )


def find_evaluation_reports(reports_dir: Path) -> list[Path]:
    """Per-corpus evaluation JSON files under `reports_dir` (its evaluation folders), sorted.

    `<stem>.summary.json` (the scores without the per-document spans) stands in for
    `<stem>.json` only where the full file is missing, as in a fresh clone.
    """
    found = []
    for folder in EVALUATION_FOLDERS:
        paths = sorted((reports_dir / folder).glob("*.json"))
        full = {p.name for p in paths}
        for path in paths:
            if path.name.endswith(".summary.json"):
                if path.name.removesuffix(".summary.json") + ".json" in full:
                    continue
            try:
                data = json.loads(path.read_text("utf8"))
            except (OSError, json.JSONDecodeError) as error:
                logger.warning("report: skipping %s (%s)", path, error)
                continue
            if is_evaluation_report(data):
                found.append(path)
    return found


def merge_by_corpus(reports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One report per (corpus, split, n_docs): the systems of reports on the same documents joined.

    A system name that occurs twice for the same documents keeps its first result (files are read
    in sorted order), so the table never shows two numbers for one cell.
    """
    merged: dict[tuple[str, str, int], dict[str, Any]] = {}
    for report in reports:
        key = (report["corpus"], report["split"], report["n_docs"])
        target = merged.setdefault(key, {**report, "systems": []})
        names = {s["name"] for s in target["systems"]}
        target["systems"].extend(s for s in report["systems"] if s["name"] not in names)
    return list(merged.values())


def disagreement(doc_results: Sequence[Sequence[tuple[int, int, str]]]) -> int:
    """How much a document's span sets differ: the number of distinct (start, end, label) spans
    that are not in every set (gold first, then each system)."""
    sets = [set(map(tuple, spans)) for spans in doc_results]
    if not sets:
        return 0
    return len(set.union(*sets) - set.intersection(*sets))


def _span_tuples(spans: Sequence[Any]) -> list[tuple[int, int, str]]:
    out = []
    for span in spans:
        if isinstance(span, Mapping):
            out.append((int(span["start"]), int(span["end"]), str(span["label"])))
        else:
            start, end, label = span[:3]
            out.append((int(start), int(end), str(label)))
    return out


def pick_samples(report: Mapping[str, Any], n: int | None = None) -> list[dict[str, Any]]:
    """The documents of a merged report whose gold and system spans disagree, most first (`n`: at
    most that many).

    Returns `{"id", "gold", "systems": {name: spans}}` with spans as (start, end, label); only
    documents every system scored, ties broken by id (deterministic).
    """
    per_system: dict[str, dict[str, Any]] = {}
    for system in report["systems"]:
        docs = system.get("docs") or []
        per_system[system["name"]] = {str(d["id"]): d for d in docs}
    if not per_system or any(not docs for docs in per_system.values()):
        return []
    common = set.intersection(*(set(docs) for docs in per_system.values()))
    scored = []
    for doc_id in common:
        first = next(iter(per_system.values()))[doc_id]
        gold = _span_tuples(first["gold"])
        systems = {name: _span_tuples(docs[doc_id]["pred"]) for name, docs in per_system.items()}
        score = disagreement([gold, *systems.values()])
        if score:
            scored.append((-score, doc_id, gold, systems))
    scored.sort(key=lambda item: (item[0], item[1]))
    return [{"id": d, "gold": g, "systems": s} for _, d, g, s in scored[:n]]


def corpus_texts(report: Mapping[str, Any], ids: Sequence[str]) -> dict[str, str]:
    """The texts of documents `ids` of the report's corpus split; {} if the corpus is not here."""
    if not ids:
        return {}
    from spacy_medllm.corpora.registry import load_corpus

    try:
        examples = load_corpus(report["corpus"], report["split"], report.get("corpus_path"))
    except (FileNotFoundError, KeyError, ValueError, OSError) as error:
        logger.warning("report: no texts for %s (%s)", report["corpus"], error)
        return {}
    wanted = set(ids)
    return {str(e.get("id")): e["text"] for e in examples if str(e.get("id")) in wanted}


def render_entities(text: str, spans: Sequence[tuple[int, int, str]], title: str) -> str:
    """displaCy's entity view of `text` with `spans` (offsets beyond the text are left out)."""
    from spacy import displacy

    ents = [
        {"start": s, "end": e, "label": label}
        for s, e, label in sorted(spans)
        if 0 <= s < e <= len(text)
    ]
    return displacy.render(
        {"text": text, "ents": ents, "title": title},
        style="ent",
        manual=True,
        page=False,
        jupyter=False,
    )


def disagreement_html(reports: Sequence[Mapping[str, Any]], n: int) -> tuple[str, str]:
    """HTML (displaCy) and Markdown (a short list) of the most disputed documents per corpus."""
    parts_html, parts_md = [], []
    for report in reports:
        if len(report["systems"]) < 1:
            continue
        candidates = pick_samples(report)
        texts = corpus_texts(report, [s["id"] for s in candidates])
        heading = f"{report['corpus']} ({report['split']})"
        if not candidates:
            continue
        if not texts:
            parts_md.append(f"- {heading}: corpus text not available on this machine")
            parts_html.append(f"<p>{html.escape(heading)}: corpus text not available here.</p>")
            continue
        # Short documents only, so that the page stays readable: the most disputed that fit.
        samples = [
            s for s in candidates if len(texts.get(s["id"], "")) in range(1, MAX_SAMPLE_CHARS)
        ]
        parts_html.append(f"<h3>{html.escape(heading)}</h3>")
        for sample in samples[:n]:
            text = texts[sample["id"]]
            block = [f'<div class="doc"><h4>document {html.escape(sample["id"])}</h4>']
            block.append(render_entities(text, sample["gold"], "gold"))
            for name, spans in sample["systems"].items():
                block.append(render_entities(text, spans, name))
            block.append("</div>")
            parts_html.append("\n".join(block))
            parts_md.append(
                f"- {heading}, document {sample['id']}: "
                + "; ".join(
                    f"{name} {len(spans)} spans" for name, spans in sample["systems"].items()
                )
                + f"; gold {len(sample['gold'])} spans"
            )
    return "\n".join(parts_html), "\n".join(parts_md)


def _image_html(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></p>'


def _markdown_to_html(text: str) -> str:
    import markdown

    return markdown.markdown(text, extensions=["tables", "fenced_code"])


def build_report(
    reports_dir: str | Path,
    output: str | Path | None = None,
    *,
    samples: int = DEFAULT_SAMPLES,
    title: str = "spacy-medllm report",
) -> dict[str, Path]:
    """Write `report.md` and `report.html` into `output` (default: `reports_dir`); return paths."""
    from spacy_medllm.evaluation.plots import plot_f1_vs_speed
    from spacy_medllm.evaluation.tables import combine_results, read_reports
    from spacy_medllm.util.machine import machine_info

    reports_dir = Path(reports_dir)
    if not reports_dir.is_dir():
        raise FileNotFoundError(
            f"No reports folder {str(reports_dir)!r}: run the workflow's evaluation steps first "
            "(spacy project run all), or pass the folder that holds their results."
        )
    output = Path(output) if output is not None else reports_dir
    output.mkdir(parents=True, exist_ok=True)
    md: list[str] = [f"# {title}", ""]
    body: list[str] = []
    toc: list[tuple[str, str]] = []

    def section(anchor: str, heading: str, markdown_text: str, images: Sequence[Path] = ()) -> None:
        toc.append((anchor, heading))
        md.extend([f"## {heading}", "", markdown_text.strip(), ""])
        md.extend(f"![{p.stem}]({_relative(p, output)})\n" for p in images)
        body.append(f'<h2 id="{anchor}">{html.escape(heading)}</h2>')
        body.append(_markdown_to_html(markdown_text))
        body.extend(_image_html(p) for p in images)

    evaluation = merge_by_corpus(read_reports(find_evaluation_reports(reports_dir)))
    if evaluation:
        plot = plot_f1_vs_speed(evaluation, output / "report_f1_vs_speed.png")
        section(
            "systems",
            "Systems across corpora (strict F1)",
            "Rows: systems; columns: test sets; cells: seqeval strict micro F1; words/s over all "
            "the corpora a system ran on (this machine).\n\n" + combine_results(evaluation),
            [plot],
        )
    for stem, title in SECTIONS:
        # `<stem>.md`, and variants such as distillation-ade-corpus-v2.md (one per run).
        paths = [
            p
            for folder in SECTION_FOLDERS
            for p in sorted((reports_dir / folder).glob(f"{stem}*.md"))
        ]
        for path in paths:
            variant = path.stem[len(stem) :].strip("-_")
            text = path.read_text("utf8")
            # The section files start with their own top heading; the report gives its own.
            lines = text.splitlines()
            if lines and lines[0].startswith("# "):
                text = "\n".join(lines[1:])
            images = sorted(path.parent.glob(f"{path.stem}*.png"))
            section(path.stem, f"{title}: {variant}" if variant else title, text, images)
    if evaluation and samples > 0:
        html_part, md_part = disagreement_html(evaluation, samples)
        if html_part:
            toc.append(("disagreements", "Where gold and the systems disagree"))
            md.extend(["## Where gold and the systems disagree", "", md_part, ""])
            body.append('<h2 id="disagreements">Where gold and the systems disagree</h2>')
            body.append(
                "<p>The documents whose gold and predicted spans differ most (displaCy; gold "
                "first, then each system).</p>"
            )
            body.append(html_part)
    if not toc:
        raise FileNotFoundError(
            f"{reports_dir} holds no results this report knows (evaluation JSON in "
            f"{', '.join(EVALUATION_FOLDERS)}/, or {', '.join(s for s, _ in SECTIONS)}.md): run "
            "the workflow's evaluation steps first."
        )
    machine = machine_info()
    footer = (
        f"Built from {reports_dir}; machine of the build: {machine.get('cpu_count')} CPUs, "
        f"Python {machine.get('python')}, spaCy {machine.get('spacy')}. Each section states the "
        "machine and settings its figures were measured with."
    )
    md.append(footer)
    nav = "".join(f'<li><a href="#{a}">{html.escape(h)}</a></li>' for a, h in toc)
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><nav><ul>{nav}</ul></nav>"
        + "\n".join(body)
        + f"<hr><p><small>{html.escape(footer)}</small></p></body></html>\n"
    )
    paths = {"md": output / "report.md", "html": output / "report.html"}
    paths["md"].write_text("\n".join(md), "utf8")
    paths["html"].write_text(page, "utf8")
    logger.info("report: %s sections -> %s", len(toc), paths["html"])
    return paths


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)
