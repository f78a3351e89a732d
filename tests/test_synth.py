"""Synthetic texts: exact spans by construction, Estonian inflection, dedup, seeds, resume, LLMs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from spacy_medllm.cli import main as cli
from spacy_medllm.data.scrape import DrugFacts, scrape
from spacy_medllm.data.synth.english import BRANDS, EN_KINDS, LAY, misspell
from spacy_medllm.data.synth.lexicon import CONDITION_ET, DRUG_ET, EFFECT_ET, inflect_et
from spacy_medllm.data.synth.llm import generate_with_llm, plan_llm_jobs
from spacy_medllm.data.synth.offline import OfflineComposer, compose_offline
from spacy_medllm.data.synth.records import (
    KINDS,
    JSONLAppender,
    normalise_for_dedup,
    read_records,
    text_hash,
)

pytest.importorskip("estnltk")

SHIPPED = Path(__file__).resolve().parents[1] / "corpus" / "drug_pages"


@pytest.fixture(scope="module")
def facts() -> list[DrugFacts]:
    return scrape([SHIPPED], progress=False).facts


@pytest.fixture(scope="module")
def composed(facts, tmp_path_factory) -> list[dict]:
    path = tmp_path_factory.mktemp("synth") / "texts.jsonl"
    summary = compose_offline(facts, path, {"en": 150, "et": 120}, seed=3, progress=False)
    assert summary["langs"]["en"]["in_file"] == 150
    assert summary["langs"]["et"]["in_file"] == 120
    return read_records(path)


def test_every_span_is_exact_and_labelled(composed):
    for record in composed:
        # Only the no_mention style has texts with nothing to label, and it names nothing.
        assert bool(record["spans"]) == (record["kind"] != "no_mention"), record["text"]
        for span in record["spans"]:
            assert record["text"][span["start"] : span["end"]] == span["text"]
            assert span["label"] in {"DRUG", "ADVERSE_EVENT", "DISEASE", "PROCEDURE"}
        starts = [s["start"] for s in record["spans"]]
        assert starts == sorted(starts)
        ends = [s["end"] for s in record["spans"]]
        assert all(e <= s for e, s in zip(ends, starts[1:], strict=False))  # no overlaps


def test_kinds_languages_and_labels_are_all_covered(composed):
    assert Counter((r["lang"], r["kind"]) for r in composed).keys() == {
        *(("en", kind) for kind in EN_KINDS),
        *(("et", kind) for kind in KINDS),
    }
    labels = Counter(s["label"] for r in composed for s in r["spans"])
    assert set(labels) == {"DRUG", "ADVERSE_EVENT", "DISEASE", "PROCEDURE"}
    emails = [r for r in composed if r["lang"] == "en" and r["kind"] == "ae_email"]
    assert all("Reason for contacting: Adverse Event" in r["text"] for r in emails)


def test_estonian_mentions_appear_in_many_case_forms(composed):
    lemmas = set(DRUG_ET.values())
    drug_mentions = [
        s["text"].lower()
        for r in composed
        if r["lang"] == "et"
        for s in r["spans"]
        if s["label"] == "DRUG"
    ]
    inflected = [m for m in drug_mentions if m not in lemmas]
    assert len(inflected) > len(drug_mentions) / 3
    # Case endings the templates ask for: genitive/partitive -i, elative -ist, comitative -iga.
    assert any(m.endswith("ist") for m in inflected)
    assert any(m.endswith("iga") for m in inflected)


def test_inflection_follows_vabamorf():
    assert inflect_et("{metformiin}", "sg el") == "metformiinist"
    assert inflect_et("{iiveldus}", "sg p") == "iiveldust"
    # Adjective and noun agree; words outside braces (genitive modifiers) stay.
    assert inflect_et("{kuiv} {köha}", "sg p") == "kuiva köha"
    assert inflect_et("2. tüüpi {diabeet}", "sg g") == "2. tüüpi diabeedi"


def test_lexicon_entries_all_inflect():
    for phrase in [*EFFECT_ET.values(), *CONDITION_ET.values()]:
        assert "{" in phrase, phrase
        genitive = inflect_et(phrase, "sg g")
        assert genitive and "{" not in genitive, phrase


def test_same_seed_same_texts_other_seed_other_texts(facts, tmp_path):
    def run(seed: int, name: str) -> list[str]:
        path = tmp_path / name
        compose_offline(facts, path, {"en": 40, "et": 30}, seed=seed, progress=False)
        return [r["text"] for r in read_records(path)]

    first, again, other = run(7, "a.jsonl"), run(7, "b.jsonl"), run(8, "c.jsonl")
    assert first == again
    assert first != other


def test_no_two_texts_are_the_same_after_normalisation(composed):
    hashes = [text_hash(r["text"]) for r in composed]
    assert len(hashes) == len(set(hashes))
    # Nor the same apart from names, addresses and numbers.
    keys = [r["meta"]["content_key"] for r in composed]
    assert len(keys) == len(set(keys))
    assert len({r["id"] for r in composed}) == len(composed)


def test_appender_rejects_duplicates_by_id_and_normalised_text(tmp_path):
    out = JSONLAppender(tmp_path / "t.jsonl")
    assert out.add({"id": "a", "text": "Metformin  gave me NAUSEA.", "lang": "en"})
    assert not out.add({"id": "a", "text": "Something else", "lang": "en"})
    assert not out.add({"id": "b", "text": "metformin gave me\nnausea.", "lang": "en"})
    assert normalise_for_dedup("A\u00a0B") == normalise_for_dedup("a b")
    assert [r["id"] for r in read_records(tmp_path / "t.jsonl")] == ["a"]


def test_an_interrupted_run_resumes_without_loss_or_duplicates(facts, tmp_path):
    full = tmp_path / "full.jsonl"
    compose_offline(facts, full, {"en": 60, "et": 40}, seed=1, progress=False)
    expected = full.read_text(encoding="utf8")

    cut = tmp_path / "cut.jsonl"
    # The run was killed while writing record 31: 30 whole lines and half of the next one.
    lines = expected.splitlines(keepends=True)
    cut.write_text("".join(lines[:30]) + lines[30][: len(lines[30]) // 2], encoding="utf8")
    summary = compose_offline(facts, cut, {"en": 60, "et": 40}, seed=1, progress=False)
    assert summary["langs"]["en"]["written_now"] == 30
    assert cut.read_text(encoding="utf8") == expected
    # A rerun on a finished file writes nothing.
    again = compose_offline(facts, cut, {"en": 60, "et": 40}, seed=1, progress=False)
    assert again["langs"]["en"]["written_now"] == again["langs"]["et"]["written_now"] == 0


def test_unknown_drugs_are_kept_out_of_estonian_only():
    unknown = DrugFacts(
        name="Zzyzxamab", uses=["Treats asthma."], common_side_effects=["nausea", "odd dreams"]
    )
    composer = OfflineComposer([unknown], seed=0)
    assert composer.profiles["et"] == []  # no Estonian name for it in the lexicon
    (profile,) = composer.profiles["en"]
    assert profile.effects == ["nausea", "odd dreams"] and profile.conditions == ["asthma"]


def test_command_line_reports_a_shortfall(facts, tmp_path):
    facts_path = tmp_path / "facts.jsonl"
    small = DrugFacts(name="Metformin", uses=["diabetes"], common_side_effects=["nausea"])
    facts_path.write_text(json.dumps(small.to_dict()) + "\n", encoding="utf8")
    summary_path = tmp_path / "summary.json"
    code = cli(
        [
            "synth",
            "offline",
            "--facts",
            str(facts_path),
            "--output",
            str(tmp_path / "o.jsonl"),
            "--n-en",
            "5000",
            "--n-et",
            "0",
            "--summary",
            str(summary_path),
        ]
    )
    # One drug with one side effect cannot give 5000 distinct texts (names and numbers do not
    # make a text new): the run says so instead of looping forever.
    assert code == 1
    summary = json.loads(summary_path.read_text())
    assert summary["langs"]["en"]["shortfall"] > 0


# -- LLM generation with a real (tiny, random) transformers model ----------------------------------


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    pytest.importorskip("torch")
    from spacy_medllm.data.synth.llm import LLM_PROMPTS
    from spacy_medllm.generators.hf.generator import HFGenerator

    from .tiny_models import build_tiny_causal_lm

    folder = build_tiny_causal_lm(
        tmp_path_factory.mktemp("synth_lm"),
        [*LLM_PROMPTS.values(), "nausea dizziness metformin headache"],
        max_position_embeddings=1024,
    )
    return HFGenerator(model=str(folder), batch_size=4, max_new_tokens=12, num_threads=1)


class Counting:
    """Wraps a generator and counts the prompts it is asked."""

    def __init__(self, generator) -> None:
        self.generator = generator
        self.batch_size = generator.batch_size
        self.prompts: list = []

    def __call__(self, prompts):
        self.prompts.extend(prompts)
        return self.generator(prompts)

    def describe(self):
        return self.generator.describe()


def test_llm_generation_writes_records_and_resumes(facts, tiny_generator, tmp_path):
    jobs = plan_llm_jobs(facts, {"en": 6, "et": 3}, seed=0)
    assert len({job.id for job in jobs}) == 9
    assert plan_llm_jobs(facts, {"en": 6, "et": 3}, seed=0) == jobs  # deterministic plan
    first = jobs[0].prompt()[-1]["content"]
    assert jobs[0].drug in first and all(e in first for e in jobs[0].effects)

    output = tmp_path / "llm.jsonl"
    counting = Counting(tiny_generator)
    summary = generate_with_llm(jobs[:4], counting, output, progress=False)
    assert len(counting.prompts) == 4
    records = read_records(output)
    assert summary["written_now"] == len(records)
    assert len(records) + len(summary["rejected"]) == 4
    for record in records:
        assert "spans" not in record  # unknown until labelled
        assert record["meta"]["generator"]["model"] == tiny_generator.describe()["model"]
        assert record["text"].strip()

    # The rest of the plan: only the jobs with no record yet reach the model (the five new
    # ones, and any of the first four whose answer was rejected).
    rejected = {r["id"] for r in summary["rejected"]}
    resumed = Counting(tiny_generator)
    generate_with_llm(jobs, resumed, output, progress=False)
    asked = {p[-1]["content"] for p in resumed.prompts}
    todo = [job for job in jobs if job.id in rejected or job in jobs[4:]]
    assert asked == {job.prompt()[-1]["content"] for job in todo}
    ids = [r["id"] for r in read_records(output)]
    assert len(ids) == len(set(ids))


def test_split_is_by_id_hash_stable_and_filters_language(tmp_path: Path) -> None:
    from spacy_medllm.data.synth.records import split_texts

    records = [
        {"id": f"t{i}", "text": f"Text {i}.", "lang": "et" if i % 3 else "en"} for i in range(90)
    ]
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    result = split_texts(source, first, second, fraction=0.5, lang="et")
    a = [json.loads(line) for line in first.read_text().splitlines()]
    b = [json.loads(line) for line in second.read_text().splitlines()]
    assert result["first"]["n"] == len(a) and result["second"]["n"] == len(b)
    assert len(a) + len(b) == 60 and 15 < len(a) < 45
    assert {r["lang"] for r in a + b} == {"et"}
    assert not {r["id"] for r in a} & {r["id"] for r in b}
    assert a[0] == next(r for r in records if r["id"] == a[0]["id"])  # whole records kept

    # More texts never move the old ones to the other side.
    more = records + [{"id": f"new{i}", "text": f"New {i}.", "lang": "et"} for i in range(30)]
    source.write_text("".join(json.dumps(r) + "\n" for r in more))
    split_texts(source, first, second, fraction=0.5, lang="et")
    again = {json.loads(line)["id"] for line in first.read_text().splitlines()}
    assert {r["id"] for r in a} <= again

    with pytest.raises(ValueError, match="no texts in language 'fi'"):
        split_texts(source, first, second, lang="fi")
    source.write_text(json.dumps(records[1]) + "\n" + json.dumps(records[1]) + "\n")
    with pytest.raises(ValueError, match="occurs twice"):
        split_texts(source, first, second)


# -- English variety (issue: the adapter must hold on text it has not seen) --------------------


def test_english_texts_vary_in_style_wording_and_names(composed):
    english = [r for r in composed if r["lang"] == "en"]
    effects = [
        s["text"].lower() for r in english for s in r["spans"] if s["label"] == "ADVERSE_EVENT"
    ]
    lay = {phrase.lower() for nps, clauses in LAY.values() for phrase in nps}
    lay |= {labelled.lower() for nps, clauses in LAY.values() for _, labelled in clauses}
    assert sum(e in lay for e in effects) > len(effects) / 3  # lay wordings are common
    drugs = [s["text"] for r in english for s in r["spans"] if s["label"] == "DRUG"]
    brands = {b for names in BRANDS.values() for b in names}
    assert any(d in brands for d in drugs)  # brand names
    generics = {g.lower() for g in BRANDS} | {b.lower() for b in brands}
    assert any(d.lower() not in generics for d in drugs)  # misspellings
    assert any(sum(s["label"] == "DRUG" for s in r["spans"]) >= 2 for r in english)
    lengths = sorted(len(r["text"]) for r in english)
    assert lengths[0] < 60 and lengths[-1] > 500  # one-liners and long e-mails


def test_negated_and_hypothetical_effects_are_written_but_not_labelled(composed):
    english = [r for r in composed if r["lang"] == "en"]
    unlabelled = [
        (r, m) for r in english for kind in ("negated", "hypothetical") for m in r["meta"][kind]
    ]
    assert len(unlabelled) >= 15
    for record, mention in unlabelled:
        assert record["text"][mention["start"] : mention["end"]] == mention["text"]
        assert not any(
            s["start"] < mention["end"] and mention["start"] < s["end"] for s in record["spans"]
        ), (record["text"], mention)
    negated = [m for r in english for m in r["meta"]["negated"]]
    assert all(
        r["text"][: m["start"]].rstrip().lower().endswith(("no", "any", "denies", "no,"))
        for r in english
        for m in r["meta"]["negated"]
    ), negated


def test_no_span_starts_with_an_article(composed):
    """Effects are labelled without "a"/"an"/"the" (corpus/out_of_style/GUIDE.md)."""
    for record in composed:
        if record["lang"] != "en":
            continue
        for span in record["spans"]:
            assert not span["text"].lower().startswith(("a ", "an ", "the ")), span


@pytest.mark.parametrize("name", ["Sertraline", "metformin", "Ciprofloxacin", "Zoloft"])
def test_misspell_changes_the_name_a_little(name):
    import random

    for seed in range(20):
        written = misspell(name, random.Random(seed))
        assert written != name and len(written) >= 4
        assert abs(len(written) - len(name)) <= 1
