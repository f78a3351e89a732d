"""Peak memory of a block: it sees what the block allocates, forgets what came before it (where
the system allows), keeps an outer block's peak across an inner one, and has a portable fallback."""

from __future__ import annotations

import sys
import time

import pytest

from spacy_medllm.util import memory as mem

BLOCK = 256 * 1024 * 1024  # bytes; filled, so every page is resident
LINUX = sys.platform.startswith("linux")


def touched(n_bytes: int) -> bytes:
    return b"\x01" * n_bytes


def test_the_peak_includes_what_the_block_allocated_and_freed() -> None:
    with mem.PeakMemory() as memory:
        data = touched(BLOCK)
        del data
    figures = memory.to_dict()
    assert figures["peak_rss_mib"] - figures["start_rss_mib"] >= 200
    # freed before the end: the end is far below the peak
    assert figures["peak_rss_mib"] - figures["end_rss_mib"] >= 200
    assert figures["method"] == ("vmhwm" if LINUX else figures["method"])


@pytest.mark.skipif(not LINUX, reason="the high-water mark reset is Linux's /proc/self/clear_refs")
def test_a_later_block_does_not_inherit_an_earlier_peak() -> None:
    with mem.PeakMemory() as first:
        data = touched(BLOCK)
        del data
    with mem.PeakMemory() as second:
        small = touched(1024 * 1024)
        del small
    assert second.method == "vmhwm"
    assert first.peak_rss_mib - second.peak_rss_mib >= 200
    assert second.peak_rss_mib >= second.start_rss_mib


@pytest.mark.skipif(not LINUX, reason="the high-water mark reset is Linux's /proc/self/clear_refs")
def test_an_outer_block_keeps_its_peak_when_an_inner_block_resets_the_mark() -> None:
    with mem.PeakMemory() as outer:
        data = touched(BLOCK)
        del data  # the outer peak is reached here, before the inner block
        with mem.PeakMemory() as inner:
            small = touched(1024 * 1024)
            del small
    assert outer.peak_rss_mib - inner.peak_rss_mib >= 200
    assert outer.peak_rss_mib - outer.start_rss_mib >= 200
    assert mem._OPEN == []


@pytest.mark.skipif(not LINUX, reason="the high-water mark reset is Linux's /proc/self/clear_refs")
def test_the_peak_is_never_below_the_rss_the_block_started_with(monkeypatch) -> None:
    """Memory freed between the start reading and the mark's reset puts the kernel's mark below
    the start (CI saw 0.2 MiB of it in a training loop); the block's own readings bound it."""
    held = [touched(BLOCK)]
    reset = mem._reset_high_water_mark

    def free_then_reset() -> bool:
        held.clear()
        return reset()

    monkeypatch.setattr(mem, "_reset_high_water_mark", free_then_reset)
    with mem.PeakMemory() as memory:
        pass
    assert memory.method == "vmhwm"
    assert memory.start_rss_mib - memory.end_rss_mib >= 200  # the block did start that high
    assert memory.peak_rss_mib == memory.start_rss_mib


def test_the_sampled_fallback_sees_an_allocation_held_longer_than_its_interval(
    monkeypatch,
) -> None:
    monkeypatch.setattr(mem, "_reset_high_water_mark", lambda: False)
    with mem.PeakMemory(interval=0.01) as memory:
        data = touched(BLOCK)
        time.sleep(0.3)
        del data
    assert memory.method == "sampled"
    assert memory.peak_rss_mib - memory.start_rss_mib >= 200
    assert memory._thread is not None and not memory._thread.is_alive()


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval must be positive"):
        mem.PeakMemory(interval=0)


def test_the_memory_benchmark_runs_each_pipeline_alone_and_ranks_them_by_peak(tmp_path) -> None:
    """Two real spaCy pipelines, each scored in its own process: the one carrying a 100k x 300
    vector table (117 MiB) peaks that much higher; the table and the report say so."""
    import json

    import numpy
    from spacy.vectors import Vectors

    from tests.test_evaluate import ET_GOLD, ruler_nlp

    corpus = tmp_path / "et.jsonl"
    corpus.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ET_GOLD), "utf8")
    patterns = [{"label": "DRUG", "pattern": "aspiriini"}]
    light, heavy = tmp_path / "light", tmp_path / "heavy"
    ruler_nlp(patterns, lang="et").to_disk(light)
    nlp = ruler_nlp(patterns, lang="et")
    nlp.vocab.vectors = Vectors(
        strings=nlp.vocab.strings,
        data=numpy.random.default_rng(0).random((100_000, 300), dtype="float32"),
        keys=[nlp.vocab.strings.add(f"w{i}") for i in range(100_000)],
    )
    nlp.to_disk(heavy)

    from benchmarks import memory as bench

    output = tmp_path / "memory"
    argv = ["--corpus", "et-dev", "--split", "dev", "--path", str(corpus), "--output", str(output)]
    assert bench.main([*argv, "--pipeline", f"light={light}", "--pipeline", f"heavy={heavy}"]) == 0
    report = json.loads((output / "memory.json").read_text("utf8"))
    rows = {row["name"]: row for row in report["systems"]}
    assert rows["heavy"]["peak_rss_mib"] - rows["light"]["peak_rss_mib"] >= 90
    assert 0 < report["floor_rss_mib"] < rows["light"]["peak_rss_mib"]
    assert rows["light"]["f1"] == rows["heavy"]["f1"] > 0  # same rules, same answers
    assert sorted(p.name for p in (output / "runs").glob("*.summary.json")) == [
        "heavy.summary.json",
        "light.summary.json",
    ]
    markdown = (output / "memory.md").read_text("utf8")
    assert f"| heavy | {rows['heavy']['peak_rss_mib']:,.0f} |" in markdown
    assert "| peak while loading | loaded | at the end |" in markdown
    assert rows["heavy"]["end_rss_mib"] <= rows["heavy"]["peak_rss_mib"]
    assert "Reproduce: `python -m benchmarks.memory --corpus et-dev" in markdown
    with pytest.raises(ValueError, match="unique"):
        bench.bench_memory([("a", str(light)), ("a", str(heavy))], "et-dev", "dev", output)


def test_the_loading_reference_measures_transformers_loading_a_base_model_in_bfloat16(
    tmp_path, tiny_model_dir
) -> None:
    """A base model with 22 M parameters (88 MB of float32 weights on disk) peaks and ends that
    much above the 2-layer tiny one when transformers loads it alone; the report says so."""
    import json
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.test_evaluate import ET_GOLD, ruler_nlp

    big = tmp_path / "big"
    shutil.copytree(tiny_model_dir, big)
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.hidden_size, config.intermediate_size = 1024, 2048
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(big), safe_serialization=True)

    from benchmarks import memory as bench

    small = bench.loading_reference(str(tiny_model_dir))
    corpus = tmp_path / "et.jsonl"
    corpus.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ET_GOLD), "utf8")
    ruler_nlp([{"label": "DRUG", "pattern": "aspiriini"}], lang="et").to_disk(tmp_path / "light")
    output = tmp_path / "memory"
    argv = ["--corpus", "et-dev", "--split", "dev", "--path", str(corpus), "--output", str(output)]
    argv += ["--pipeline", f"light={tmp_path / 'light'}", "--loading-reference", str(big)]
    assert bench.main(argv) == 0
    report = json.loads((output / "memory.json").read_text("utf8"))
    reference = report["loading_reference"]
    assert reference["model"] == str(big) and reference["method"] == small["method"]
    assert reference["peak_rss_mib"] - small["peak_rss_mib"] >= 60  # read in float32 at least
    assert reference["end_rss_mib"] - small["end_rss_mib"] >= 20  # 44 MB held in bfloat16
    assert reference["end_rss_mib"] <= reference["peak_rss_mib"]
    markdown = (output / "memory.md").read_text("utf8")
    assert f"loading `{big}` straight in bfloat16" in markdown
    assert f"peaks at {reference['peak_rss_mib']:,.0f} MiB" in markdown
