"""Drug pages to structured facts: a polite cached fetcher, kept apart from an HTML parser.

Fetching (`Fetcher`): a User-Agent, a minimum interval between requests to one host, retries
with exponential backoff on server errors and lost connections, robots.txt (urllib.robotparser),
and an on-disk cache keyed by URL, so a rerun fetches nothing. A failed fetch is a
`FetchResult` with an error, never an exception.

Parsing (`parse_drug_page`): beautifulsoup4 finds the drug's name and the sections by their
headings (whatever the layout: headings and lists, definition lists, tables), html2text turns
a section into text. A page with a missing section gives `DrugFacts` with the problem listed;
a page that is no drug page at all raises `DrugPageError`, which `scrape` records and skips.

    python -m spacy_medllm scrape corpus/drug_pages --output corpus/generated/drug_facts.jsonl
    python -m spacy_medllm scrape https://example.org/drugs/metformin.html --output facts.jsonl
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import urllib.robotparser
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger("spacy_medllm")

DEFAULT_USER_AGENT = "spacy-medllm-scraper/0.1 (+https://github.com/spacy-medllm/spacy-medllm)"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
SECTIONS = ("uses", "common_side_effects", "serious_side_effects")


# -- fetching --------------------------------------------------------------------------------------


@dataclass
class FetchResult:
    """One URL's outcome: the page text, or why there is none."""

    url: str
    text: str | None = None
    status: int | None = None
    from_cache: bool = False
    error: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.text is not None and self.error is None


class Fetcher:
    """Polite HTTP GETs (httpx) with a disk cache. Use as a context manager, or call `close()`.

    cache_dir: one `<sha256 of the URL>.html` + `.json` (URL, status, time) pair per page.
    min_interval: seconds between two requests to the same host (robots.txt included).
    max_retries: further attempts after a 429/5xx answer or a connection error, waiting
        backoff, 2*backoff, 4*backoff... seconds (a Retry-After header wins when larger).
    respect_robots: read the host's /robots.txt once and skip disallowed URLs.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        user_agent: str = DEFAULT_USER_AGENT,
        min_interval: float = 1.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        timeout: float = 20.0,
        respect_robots: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if min_interval < 0 or backoff < 0 or max_retries < 0:
            raise ValueError("min_interval, backoff and max_retries must not be negative")
        self.cache_dir = Path(cache_dir)
        self.user_agent = user_agent
        self.min_interval = float(min_interval)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.timeout = float(timeout)
        self.respect_robots = respect_robots
        self._sleep = sleep
        self._client: Any = None
        self._last_request: dict[str, float] = {}
        self._robots: dict[str, urllib.robotparser.RobotFileParser] = {}
        self.n_requests = 0  # HTTP requests actually sent (robots.txt included)

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _http(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.Client(
                headers={"User-Agent": self.user_agent},
                timeout=self.timeout,
                follow_redirects=True,
            )
        return self._client

    # -- the cache

    def cache_path(self, url: str) -> Path:
        return self.cache_dir / (hashlib.sha256(url.encode("utf8")).hexdigest() + ".html")

    def cached(self, url: str) -> str | None:
        path = self.cache_path(url)
        return path.read_text(encoding="utf8") if path.is_file() else None

    def _store(self, url: str, text: str, status: int) -> None:
        path = self.cache_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf8")
        tmp.replace(path)  # never a half-written page in the cache
        meta = {"url": url, "status": status, "fetched_at": time.time()}
        path.with_suffix(".json").write_text(json.dumps(meta), encoding="utf8")

    # -- politeness

    def _wait_for(self, host: str) -> None:
        last = self._last_request.get(host)
        if last is not None:
            remaining = self.min_interval - (time.monotonic() - last)
            if remaining > 0:
                self._sleep(remaining)
        self._last_request[host] = time.monotonic()

    def _get(self, url: str) -> Any:
        self._wait_for(urlsplit(url).netloc)
        self.n_requests += 1
        return self._http().get(url)

    def allowed(self, url: str) -> bool:
        """Whether the host's robots.txt lets our User-Agent fetch `url` (no robots.txt: yes)."""
        if not self.respect_robots:
            return True
        parts = urlsplit(url)
        root = f"{parts.scheme}://{parts.netloc}"
        parser = self._robots.get(root)
        if parser is None:
            parser = urllib.robotparser.RobotFileParser(root + "/robots.txt")
            try:
                response = self._get(root + "/robots.txt")
                status = response.status_code
                lines = response.text.splitlines() if status == 200 else []
            except Exception as error:  # an unreachable robots.txt: the page fetch will tell
                logger.warning("Could not read %s/robots.txt: %s", root, error)
                status, lines = 404, []
            if status in (401, 403):
                parser.disallow_all = True  # the convention urllib.robotparser.read() follows
            else:
                parser.parse(lines)
            self._robots[root] = parser
        return parser.can_fetch(self.user_agent, url)

    def fetch(self, url: str, refresh: bool = False) -> FetchResult:
        """The page at `url`: from the cache if it is there (no request at all), else by HTTP."""
        if not refresh:
            text = self.cached(url)
            if text is not None:
                return FetchResult(url, text=text, status=200, from_cache=True)
        if urlsplit(url).scheme not in ("http", "https"):
            return FetchResult(url, error=f"not an http(s) URL: {url!r}")
        if not self.allowed(url):
            return FetchResult(url, error="disallowed by robots.txt")
        attempts = 0
        error = "no attempt made"
        status: int | None = None
        retry_after: str | None = None
        while attempts <= self.max_retries:
            if attempts:
                self._sleep(self._retry_delay(attempts, retry_after))
            attempts += 1
            retry_after = None
            try:
                response = self._get(url)
            except Exception as exc:  # httpx.TransportError and friends: worth another try
                error = f"{type(exc).__name__}: {exc}"
                continue
            status = response.status_code
            if status == 200:
                self._store(url, response.text, status)
                return FetchResult(url, text=response.text, status=status, attempts=attempts)
            error = f"HTTP {status}"
            if status not in RETRY_STATUSES:
                break
            retry_after = response.headers.get("Retry-After")
        return FetchResult(url, status=status, error=error, attempts=attempts)

    def _retry_delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff * 2 ** (attempt - 1)
        if retry_after and retry_after.isdigit():
            delay = max(delay, float(retry_after))
        return delay


# -- parsing ---------------------------------------------------------------------------------------


class DrugPageError(ValueError):
    """The page is not a readable drug page (empty, not HTML, no drug name, no section at all)."""


@dataclass
class DrugFacts:
    """What a drug page says: the drug's name, its uses and its side effects."""

    name: str
    uses: list[str] = field(default_factory=list)
    common_side_effects: list[str] = field(default_factory=list)
    serious_side_effects: list[str] = field(default_factory=list)
    source: str = ""
    problems: list[str] = field(default_factory=list)  # what the parser could not find

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DrugFacts:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @property
    def side_effects(self) -> list[str]:
        return [*self.common_side_effects, *self.serious_side_effects]


# Heading wording -> section. Serious is tested before common: "serious side effects" names both.
_SECTION_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "serious_side_effects",
        re.compile(
            r"serious|severe|rare but|emergency|medical (help|attention)|call (your|a) doctor|"
            r"stop taking|warning signs",
            re.I,
        ),
    ),
    ("common_side_effects", re.compile(r"side[- ]effects?|adverse (effects|reactions)", re.I)),
    ("uses", re.compile(r"\buses?\b|used (for|to)|indications?|what is .+ for|treats", re.I)),
)
_HEADING_TAGS = ("h1", "h2", "h3", "h4", "h5", "dt", "th", "caption", "summary")
# The words that introduce an enumeration: "Rare but serious side effects are", "Watch for:".
_LEAD_IN = re.compile(
    r"^(?:[^.:]*?\b(?:side[- ]effects?|adverse (?:effects|reactions)|reactions?)\b[^.:]*?"
    r"\b(?:include|includes|are|is|can be|may be)\b\s*:?|[^.:]*:)\s*",
    re.I,
)


_FREQUENCY = re.compile(r"(very )?(common|rare|uncommon)|frequency|not known", re.I)


def _classify(heading: str) -> str | None:
    text = " ".join(heading.split())
    if not text or len(text) > 120:
        return None
    for section, pattern in _SECTION_PATTERNS:
        if pattern.search(text):
            return section
    return None


def _html_to_text(html: str) -> str:
    import html2text

    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_links = True
    converter.ignore_images = True
    converter.ignore_emphasis = True
    return converter.handle(html)


def _clean_item(item: str) -> str:
    item = re.sub(r"\s+", " ", item).strip(" \t*-•·;:.,")
    item = re.sub(r"\s*\([^)]*\)$", "", item)  # "(in about 1 in 10 people)" frequency notes
    return item.strip(" ;:.,")


def _split_enumeration(sentence: str) -> list[str]:
    """'Common side effects include nausea, diarrhoea and a metallic taste.' -> the three."""
    body = _LEAD_IN.sub("", sentence.strip().rstrip("."))
    parts = re.split(r",\s*(?:and\s+|or\s+)?|\s+(?:and|or)\s+|;\s*", body)
    return [p for p in (_clean_item(part) for part in parts) if p]


def _section_items(section: str, chunks: list[Any]) -> list[str]:
    """Items of a section from its HTML pieces: list items and table cells when there are any,
    else the section's text (uses: its sentences; side effects: the enumerations it makes)."""
    cells: list[str] = []
    texts: list[str] = []
    for chunk in chunks:
        if getattr(chunk, "name", None) is None:
            continue
        found = [chunk] if chunk.name in ("li", "td") else chunk.find_all(["li", "td"])
        for cell in found:
            # Unclosed <li> tags nest the following items inside: keep the cell's own text.
            nested = cell.find(["li", "td"]) is not None
            raw = " ".join(cell.find_all(string=True, recursive=False)) if nested else None
            text = _clean_item(raw if raw is not None else cell.get_text(" ", strip=True))
            # A table's frequency column ("common", "rare") is no side effect.
            if text and not _FREQUENCY.fullmatch(text):
                cells.append(text)
        if not found:
            texts.append(_html_to_text(str(chunk)).strip())
    if cells:
        items = cells
    else:
        sentences = [s for t in texts for s in re.split(r"(?<=[.!?])\s+", t) if s.strip()]
        if section == "uses":
            items = [_clean_item(s) for s in sentences]
        else:
            # Sentences that introduce a list ("... include a, b and c"); else every sentence.
            listing = [s for s in sentences if _LEAD_IN.match(s.strip())]
            items = [i for s in (listing or sentences) for i in _split_enumeration(s)]
    seen: set[str] = set()
    unique = []
    for item in items:
        if item and item.lower() not in seen:
            seen.add(item.lower())
            unique.append(item)
    return unique


def _drug_name(soup: Any) -> str | None:
    for finder in (
        lambda: soup.find(attrs={"itemprop": "name"}),
        lambda: soup.find(class_=re.compile(r"drug[-_]?name", re.I)),
        lambda: soup.find("h1"),
        lambda: soup.find("meta", attrs={"property": "og:title"}),
        lambda: soup.find("title"),
    ):
        node = finder()
        if node is None:
            continue
        text = node.get("content", "") if node.name == "meta" else node.get_text(" ", strip=True)
        # "Metformin: uses and side effects | Example Health" -> "Metformin"
        name = re.split(r"\s*[|:–—(]\s*|\s+-\s+", text.strip())[0].strip()
        if name and len(name) <= 60:
            return name
    return None


def _sections(soup: Any) -> dict[str, list[Any]]:
    """Section name -> the HTML pieces under its heading, up to the next recognised heading."""
    found: dict[str, list[Any]] = {}
    for heading in soup.find_all(_HEADING_TAGS):
        section = _classify(heading.get_text(" ", strip=True))
        if section is None:
            continue
        pieces: list[Any] = []
        if heading.name == "dt":
            sibling = heading.find_next_sibling()
            if sibling is not None and sibling.name == "dd":
                pieces.append(sibling)
        elif heading.name in ("th", "caption"):
            # A table whose header names the section: its cells are the items.
            table = heading.find_parent("table")
            if table is not None:
                pieces.extend(table.find_all("td"))
        elif heading.name == "summary":
            pieces.extend(c for c in heading.parent.children if c is not heading)
        else:
            level = heading.name
            for sibling in heading.find_next_siblings():
                if sibling.name in ("h1", "h2", "h3", "h4", "h5") and sibling.name <= level:
                    break
                if sibling.name in _HEADING_TAGS and _classify(sibling.get_text(" ", strip=True)):
                    break
                pieces.append(sibling)
        if pieces and section not in found:
            found[section] = pieces
    return found


def parse_drug_page(html: str, source: str = "") -> DrugFacts:
    """The facts a drug page states. Missing sections are listed in `problems`; a page with no
    drug name or no section at all raises `DrugPageError`."""
    from bs4 import BeautifulSoup

    if not html or not html.strip():
        raise DrugPageError(f"{source or 'page'}: empty page")
    if "\x00" in html:
        raise DrugPageError(f"{source or 'page'}: binary content, not HTML")
    soup = BeautifulSoup(html, "html.parser")
    for junk in soup(["script", "style", "nav", "footer", "noscript"]):
        junk.decompose()
    name = _drug_name(soup)
    if not name:
        raise DrugPageError(f"{source or 'page'}: no drug name (no h1, title or name field)")
    sections = _sections(soup)
    if not sections:
        raise DrugPageError(
            f"{source or 'page'}: no uses or side-effect section found; an unknown layout?"
        )
    facts = DrugFacts(name=name, source=source)
    for section in SECTIONS:
        if section not in sections:
            facts.problems.append(f"no {section.replace('_', ' ')} section")
            continue
        items = _section_items(section, sections[section])
        if not items:
            facts.problems.append(f"the {section.replace('_', ' ')} section is empty")
        setattr(facts, section, items)
    return facts


# -- batch -----------------------------------------------------------------------------------------


@dataclass
class ScrapeReport:
    """Every source ends in exactly one of: facts, or skipped with the reason."""

    facts: list[DrugFacts] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    n_fetched: int = 0
    n_from_cache: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "n_sources": len(self.facts) + len(self.skipped),
            "n_facts": len(self.facts),
            "n_with_problems": sum(1 for f in self.facts if f.problems),
            "problems": {f.source: f.problems for f in self.facts if f.problems},
            "skipped": self.skipped,
            "n_fetched": self.n_fetched,
            "n_from_cache": self.n_from_cache,
        }


def expand_sources(sources: Iterable[str | Path]) -> list[str]:
    """URLs as they are; folders become their *.html / *.htm files, sorted."""
    expanded: list[str] = []
    for source in sources:
        text = str(source)
        if text.startswith(("http://", "https://")):
            expanded.append(text)
            continue
        path = Path(text)
        if path.is_dir():
            expanded.extend(
                str(p) for p in sorted(path.iterdir()) if p.suffix.lower() in (".html", ".htm")
            )
        else:
            expanded.append(text)
    return expanded


def scrape(
    sources: Iterable[str | Path], fetcher: Fetcher | None = None, progress: bool = True
) -> ScrapeReport:
    """Parse every source (a saved HTML file or a URL); a broken one is recorded and skipped."""
    from tqdm import tqdm

    report = ScrapeReport()
    items = expand_sources(sources)
    for source in tqdm(items, desc="drug pages", unit="page", disable=not progress):
        if source.startswith(("http://", "https://")):
            if fetcher is None:
                report.skipped.append({"source": source, "reason": "a URL, but no fetcher given"})
                continue
            result = fetcher.fetch(source)
            if not result.ok:
                report.skipped.append({"source": source, "reason": f"fetch: {result.error}"})
                continue
            report.n_from_cache += result.from_cache
            report.n_fetched += not result.from_cache
            html = result.text or ""
        else:
            try:
                html = Path(source).read_text(encoding="utf8")
            except (OSError, UnicodeDecodeError) as error:
                report.skipped.append({"source": source, "reason": f"read: {error}"})
                continue
        try:
            report.facts.append(parse_drug_page(html, source=source))
        except DrugPageError as error:
            report.skipped.append({"source": source, "reason": str(error)})
    for skipped in report.skipped:
        logger.warning("Skipped %s: %s", skipped["source"], skipped["reason"])
    return report


def write_facts(facts: Sequence[DrugFacts], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf8") as file_:
        for fact in facts:
            file_.write(json.dumps(fact.to_dict(), ensure_ascii=False) + "\n")
    return path


def read_facts(path: str | Path) -> list[DrugFacts]:
    with Path(path).open(encoding="utf8") as file_:
        return [DrugFacts.from_dict(json.loads(line)) for line in file_ if line.strip()]
