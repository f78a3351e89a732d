"""The drug page parser on hand-written fixtures; the fetcher against a real local HTTP server."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from spacy_medllm.cli import main as cli
from spacy_medllm.data.scrape import (
    DrugPageError,
    Fetcher,
    expand_sources,
    parse_drug_page,
    read_facts,
    scrape,
)

FIXTURES = Path(__file__).parent / "fixtures" / "drug_pages"
SHIPPED = Path(__file__).resolve().parents[1] / "corpus" / "drug_pages"


def parse_fixture(name: str):
    return parse_drug_page((FIXTURES / name).read_text(encoding="utf8"), source=name)


def test_headings_and_lists_layout():
    facts = parse_fixture("headings_list.html")
    assert facts.name == "Exampledrug"
    assert facts.uses == ["high blood pressure", "migraine prevention"]
    # Punctuation and the frequency note go, the repeated item is kept once, the intro
    # paragraph is no side effect, and the Storage section is not read.
    assert facts.common_side_effects == ["Dizziness", "dry mouth"]
    assert facts.serious_side_effects == ["fainting", "swelling of the face"]
    assert facts.problems == []


def test_missing_section_is_recorded_not_raised():
    facts = parse_fixture("missing_serious.html")
    assert facts.name == "Testamol"
    assert facts.common_side_effects == ["nausea", "a skin rash", "constipation"]
    assert facts.serious_side_effects == []
    assert facts.problems == ["no serious side effects section"]
    assert any("tension headache" in use for use in facts.uses)


def test_definition_list_with_sentences():
    facts = parse_fixture("definition_list.html")
    assert facts.name == "Fictivastatin"
    assert facts.uses == ["Fictivastatin lowers high cholesterol"]
    # "These usually pass." introduces no list, so it is not an item.
    assert facts.common_side_effects == ["muscle pain", "headache", "bloating"]
    assert facts.serious_side_effects == ["dark urine", "muscle breakdown"]


def test_tables_drop_the_frequency_column():
    facts = parse_fixture("tables.html")
    assert facts.name == "Placebin"
    assert facts.common_side_effects == ["drowsiness", "headache"]
    assert facts.serious_side_effects == ["seizures"]
    assert facts.uses == ["Treats hay fever"]


def test_unclosed_tags_still_parse():
    facts = parse_fixture("unclosed_tags.html")
    assert facts.name == "Brokenol"
    assert facts.common_side_effects == ["nausea", "heartburn"]
    assert "no serious side effects section" in facts.problems


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("no_sections.html", "no uses or side-effect section"),
        ("empty.html", "empty page"),
        ("binary.html", "binary content"),
    ],
)
def test_pages_that_are_no_drug_pages_raise_a_clear_error(name, reason):
    with pytest.raises(DrugPageError, match=reason):
        parse_fixture(name)


def test_batch_skips_broken_pages_and_keeps_going(tmp_path):
    report = scrape([FIXTURES], progress=False)
    parsed = {Path(f.source).name for f in report.facts}
    skipped = {Path(s["source"]).name: s["reason"] for s in report.skipped}
    assert parsed == {
        "headings_list.html",
        "missing_serious.html",
        "definition_list.html",
        "tables.html",
        "unclosed_tags.html",
    }
    assert set(skipped) == {"no_sections.html", "empty.html", "binary.html"}
    assert "empty page" in skipped["empty.html"]
    summary = report.summary()
    assert summary["n_sources"] == 8
    assert summary["problems"][str(FIXTURES / "missing_serious.html")] == [
        "no serious side effects section"
    ]


def test_shipped_pages_all_parse_completely(tmp_path):
    output = tmp_path / "facts.jsonl"
    report_path = tmp_path / "report.json"
    assert cli(["scrape", str(SHIPPED), "--output", str(output), "--report", str(report_path)]) == 0
    facts = read_facts(output)
    assert len(facts) == len(expand_sources([SHIPPED])) >= 25
    assert all(f.uses and f.common_side_effects and f.serious_side_effects for f in facts)
    assert json.loads(report_path.read_text())["skipped"] == []
    metformin = next(f for f in facts if f.name == "Metformin")
    assert "lactic acidosis" in metformin.serious_side_effects


# -- fetching from a real local server -------------------------------------------------------------


class _Site(BaseHTTPRequestHandler):
    hits: ClassVar[Counter] = Counter()
    user_agents: ClassVar[list[str]] = []
    failures_left: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        type(self).hits[self.path] += 1
        type(self).user_agents.append(self.headers.get("User-Agent", ""))
        if self.path == "/robots.txt":
            return self._send(200, "User-agent: *\nDisallow: /private/\n", "text/plain")
        left = self.failures_left.get(self.path, 0)
        if left:
            self.failures_left[self.path] = left - 1
            return self._send(500, "try later")
        name = self.path.rsplit("/", 1)[-1]
        page = FIXTURES / name
        if page.is_file() and name.endswith(".html"):
            return self._send(200, page.read_text(encoding="utf8"))
        return self._send(404, "not found")

    def _send(self, status: int, body: str, content_type: str = "text/html") -> None:
        data = body.encode("utf8")
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def site():
    _Site.hits = Counter()
    _Site.user_agents = []
    _Site.failures_left = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Site
    server.shutdown()
    server.server_close()


def fetcher(tmp_path: Path, **kwargs) -> Fetcher:
    return Fetcher(tmp_path / "cache", min_interval=0, backoff=0.01, **kwargs)


def test_rerun_is_served_from_the_cache_with_no_request(site, tmp_path):
    root, handler = site
    urls = [f"{root}/drugs/headings_list.html", f"{root}/drugs/tables.html"]
    with fetcher(tmp_path, user_agent="medllm-test-agent/1") as first:
        report = scrape(urls, fetcher=first, progress=False)
    assert [f.name for f in report.facts] == ["Exampledrug", "Placebin"]
    assert report.n_fetched == 2
    assert sum(handler.hits.values()) == 3  # robots.txt once, two pages
    assert set(handler.user_agents) == {"medllm-test-agent/1"}

    handler.hits.clear()
    with fetcher(tmp_path) as second:
        again = scrape(urls, fetcher=second, progress=False)
    assert sum(handler.hits.values()) == 0
    assert second.n_requests == 0
    assert again.n_from_cache == 2
    assert [f.to_dict() for f in again.facts] == [f.to_dict() for f in report.facts]


def test_robots_txt_disallow_is_respected(site, tmp_path):
    root, handler = site
    with fetcher(tmp_path) as f:
        result = f.fetch(f"{root}/private/tables.html")
        allowed = f.fetch(f"{root}/drugs/tables.html")
    assert not result.ok and result.error == "disallowed by robots.txt"
    assert handler.hits["/private/tables.html"] == 0
    assert allowed.ok
    assert handler.hits["/robots.txt"] == 1  # read once per host
    assert not f.cache_path(f"{root}/private/tables.html").exists()


def test_server_error_is_retried_with_backoff(site, tmp_path):
    root, handler = site
    handler.failures_left["/drugs/tables.html"] = 2
    waits: list[float] = []
    with Fetcher(tmp_path / "cache", min_interval=0, backoff=0.5, sleep=waits.append) as f:
        result = f.fetch(f"{root}/drugs/tables.html")
    assert result.ok and result.attempts == 3
    assert handler.hits["/drugs/tables.html"] == 3
    assert waits == [0.5, 1.0]  # exponential backoff between the attempts


def test_persistent_failure_is_reported_and_the_batch_continues(site, tmp_path):
    root, handler = site
    handler.failures_left["/drugs/tables.html"] = 99
    urls = [f"{root}/drugs/tables.html", f"{root}/drugs/missing.html", f"{root}/drugs/empty.html"]
    urls.append(f"{root}/drugs/headings_list.html")
    with fetcher(tmp_path, max_retries=2) as f:
        report = scrape(urls, fetcher=f, progress=False)
    reasons = {s["source"].rsplit("/", 1)[-1]: s["reason"] for s in report.skipped}
    assert reasons["tables.html"] == "fetch: HTTP 500"
    assert handler.hits["/drugs/tables.html"] == 3
    assert reasons["missing.html"] == "fetch: HTTP 404"
    assert handler.hits["/drugs/missing.html"] == 1  # a 404 is not retried
    assert "empty page" in reasons["empty.html"]
    assert [f.name for f in report.facts] == ["Exampledrug"]


def test_rate_limit_waits_between_requests_to_one_host(site, tmp_path):
    root, _ = site
    waits: list[float] = []
    with Fetcher(tmp_path / "cache", min_interval=30.0, sleep=waits.append) as f:
        f.fetch(f"{root}/drugs/tables.html")
        f.fetch(f"{root}/drugs/headings_list.html")
    # robots.txt, then two pages: the second and third request each waited (almost) 30 s.
    assert len(waits) == 2 and all(25.0 < w <= 30.0 for w in waits)
