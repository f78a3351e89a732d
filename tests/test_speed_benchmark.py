"""The speed benchmark (`benchmarks.speed`) end to end on a tiny random model and three
seed test e-mails: what it measures must be consistent (the batched and unbatched paths give the
same answers, in fewer `generate` calls), its files must be written and merged across calls.
Speeds themselves are never asserted; spacy-llm's systems are built but not run here (the tiny
model's 256-token context cannot hold spacy-llm's NER.v3 prompt)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import speed as bench
from spacy_medllm.core.prompts import PromptTemplate

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")

LABELS = ["DRUG", "ADVERSE_EVENT"]


@pytest.fixture
def adapter(tiny_adapter_dir: Path, tmp_path: Path) -> Path:
    """The random tiny adapter with the prompt settings a fine-tuning run writes next to it."""
    folder = Path(shutil.copytree(tiny_adapter_dir, tmp_path / "adapter"))
    settings = {"labels": LABELS, "label_definitions": {}, "template": PromptTemplate().to_dict()}
    (folder / "prompt_template.json").write_text(json.dumps(settings), encoding="utf8")
    return folder


def run(model: Path, adapter: Path, output: Path, systems, batch_size: int = 8) -> dict:
    return bench.run_speed_benchmark(
        model=str(model),
        adapter=adapter,
        systems=systems,
        corpora=["seed-ae-emails"],
        limit=3,
        batch_size=batch_size,
        max_new_tokens=16,
        output=output,
        command="test",
        progress=lambda message: None,
    )


def test_batched_and_unbatched_paths_agree_and_the_report_is_written(
    tiny_model_dir, adapter, tmp_path
) -> None:
    output = tmp_path / "reports" / "speed"
    report = run(tiny_model_dir, adapter, output, [bench.OURS, bench.UNBATCHED])
    results = report["corpora"]["seed-ae-emails"]["results"]
    ours, single = results[bench.OURS], results[bench.UNBATCHED]
    assert report["corpora"]["seed-ae-emails"]["n_docs"] == ours["n_docs"] == single["n_docs"] == 3
    assert (ours["generator_batch_size"], single["generator_batch_size"]) == (8, 1)
    # Same model, same greedy answers: only the number of generate calls differs.
    assert ours["answer_tokens"] == single["answer_tokens"] > 0
    assert (ours["f1"], ours["n_predicted"]) == (single["f1"], single["n_predicted"])
    assert single["generate_calls"] > ours["generate_calls"] >= 1
    assert ours["n_words"] == single["n_words"] > 100
    comparison = report["corpora"]["seed-ae-emails"]["comparisons"][bench.UNBATCHED]
    assert comparison["speedup"] == pytest.approx(ours["docs_per_s"] / single["docs_per_s"])
    assert comparison["f1_delta"] == 0

    written = json.loads(output.with_suffix(".json").read_text(encoding="utf8"))
    assert written["corpora"] == json.loads(json.dumps(report["corpora"]))
    assert written["adapter_sha256"] and written["machine"]["cpu_count"]
    markdown = output.with_suffix(".md").read_text(encoding="utf8")
    assert ours["dtype"] == single["dtype"] == "float32"  # tests pin float32 (conftest)
    assert f"| seed-ae-emails | {bench.OURS} | float32 | 3 |" in markdown
    assert f"| seed-ae-emails | {bench.UNBATCHED} | float32 | 3 |" in markdown
    assert output.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    # Memory: the system's build, load and run; the model's weights are resident at the peak.
    for result in (ours, single):
        memory = result["memory"]
        assert memory["peak_rss_mib"] >= max(memory["start_rss_mib"], memory["end_rss_mib"]) > 0
        assert f"| {memory['peak_rss_mib']:,.0f} |" in markdown
    assert "| peak RSS MiB |" in markdown


def test_later_calls_keep_earlier_results_of_the_same_setup_only(
    tiny_model_dir, adapter, tmp_path
) -> None:
    output = tmp_path / "speed"
    run(tiny_model_dir, adapter, output, [bench.OURS])
    report = run(tiny_model_dir, adapter, output, [bench.UNBATCHED])
    assert list(report["corpora"]["seed-ae-emails"]["results"]) == [bench.OURS, bench.UNBATCHED]
    assert bench.UNBATCHED in report["corpora"]["seed-ae-emails"]["comparisons"]
    # Another batch size is another setup: the earlier results are not mixed in.
    report = run(tiny_model_dir, adapter, output, [bench.UNBATCHED], batch_size=4)
    assert list(report["corpora"]["seed-ae-emails"]["results"]) == [bench.UNBATCHED]


def test_spacy_llm_systems_run_the_same_generator_settings(tiny_model_dir, adapter) -> None:
    pytest.importorskip("spacy_llm")
    for name, batch_size in ((bench.SPACY_LLM_NER, 8), (bench.SPACY_LLM_NER_1, 1)):
        nlp = bench.build_system(name, str(tiny_model_dir), str(adapter), 8, 16)
        generator = bench.pipeline_generator(nlp)
        assert generator.model == str(tiny_model_dir) and generator.adapter == str(adapter)
        assert (generator.batch_size, generator.max_new_tokens) == (batch_size, 16)
        assert sorted(nlp.get_pipe("llm")._task.labels) == sorted(LABELS)
    for name, dtype in (
        (bench.SPACY_LLM_JSON_1, "auto"),
        (bench.SPACY_LLM_JSON_1_FLOAT32, "float32"),
    ):
        generator = bench.pipeline_generator(
            bench.build_system(name, str(tiny_model_dir), str(adapter), 8, 16)
        )
        assert (generator.batch_size, generator.dtype, generator.draft_tokens) == (1, dtype, 0)
    with pytest.raises(ValueError, match="unknown system"):
        bench.build_system("nothing", str(tiny_model_dir), str(adapter), 8, 16)


def test_the_float32_system_pins_what_the_default_leaves_to_the_cpu(
    tiny_model_dir, adapter, monkeypatch
) -> None:
    from spacy_medllm.generators.hf import generator as hf

    monkeypatch.setattr(hf, "cpu_supports_bf16", lambda: True)
    ours, pinned = (
        bench.pipeline_generator(bench.build_system(name, str(tiny_model_dir), str(adapter), 8, 16))
        for name in (bench.OURS, bench.FLOAT32)
    )
    assert (ours.dtype, pinned.dtype) == ("auto", "float32")
    ours.initialize()
    pinned.initialize()
    assert (ours.describe()["dtype"], pinned.describe()["dtype"]) == ("bfloat16", "float32")


def test_the_command_line_writes_a_reproduce_line_with_the_thread_count(
    tiny_model_dir, adapter, tmp_path
) -> None:
    import torch

    output = tmp_path / "cli"
    argv = [
        "--model",
        str(tiny_model_dir),
        "--adapter",
        str(adapter),
        "--systems",
        bench.OURS,
        "--corpora",
        "seed-ae-emails",
        "--limit",
        "1",
        "--max-new-tokens",
        "8",
        "--output",
        str(output),
    ]
    assert bench.main(argv) == 0
    report = json.loads(output.with_suffix(".json").read_text(encoding="utf8"))
    threads = torch.get_num_threads()
    assert report["command"].startswith(f"OMP_NUM_THREADS={threads} ")
    assert report["command"].endswith(f"--output {output}")
    assert report["machine"]["torch_threads"] == threads
    assert f"Reproduce: `{report['command']}`" in output.with_suffix(".md").read_text("utf8")
