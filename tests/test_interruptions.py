"""Runs killed with SIGKILL mid-way, then started again with the same command: fine-tuning, LLM
synthesis and evaluation resume without losing or repeating finished work.

Each test starts `python -m spacy_medllm ...` in a subprocess, polls the disk every 10 ms for
progress (a checkpoint, written records, response-cache entries), kills the process with SIGKILL
as soon as there is some, reruns the same command to the end and compares the outcome with an
uninterrupted run of the same command. (Labelling has its own such test in test_labelling.py.)
Each test reports its figures to the reliability log (benchmarks/reliability.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.gold_examples import GOLD, LABELS, VOCAB_TEXTS
from tests.reliability_log import log_figure
from tests.test_component_hf import trained  # noqa: F401 - the tiny LoRA fixture

# peft reads the attribute that transformers 5 renamed; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
POLL_SECONDS = 0.01
START_TIMEOUT = 300  # generous: loading torch is slow on a busy machine


def run_and_kill(
    command: list[str], progressed: Callable[[], bool], log: Path, env: dict[str, str] = ENV
) -> int:
    """Start `command`, poll `progressed()` every 10 ms and SIGKILL the process as soon as it
    is true; returns the exit code (-SIGKILL when the kill landed while the process ran).
    The process's stderr goes to `log`."""
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if progressed():
                    break
            except OSError:  # a folder the process is writing or rotating changed under us
                pass
            time.sleep(POLL_SECONDS)
        process.send_signal(signal.SIGKILL)  # does nothing if the process has ended
        process.wait()
    return process.returncode


def run_to_the_end(command: list[str], env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished


def gold_lines(texts_and_pairs) -> list[dict]:
    lines = []
    for i, (text, pairs) in enumerate(texts_and_pairs):
        entities = [
            {"start": text.index(s), "end": text.index(s) + len(s), "label": label}
            for s, label in pairs
        ]
        lines.append({"id": f"g{i:03d}", "text": text, "entities": entities})
    return lines


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf8")
    return path


# -- fine-tuning -----------------------------------------------------------------------------------

MAX_STEPS = 60
SAVE_STEPS = 4
# What transformers' Trainer keeps next to the weights in a checkpoint (torch's own formats).
TRAINER_STATE_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama with a ChatML tokenizer (the one tests/test_finetune.py trains)."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from tests.tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(
        tmp_path_factory.mktemp("interrupt_lm"), VOCAB_TEXTS, max_position_embeddings=512, seed=0
    )


def complete_checkpoints(folder: Path) -> list[int]:
    """Steps of the checkpoints whose trainer_state.json (written last) exists."""
    return sorted(
        int(path.name.split("-")[1])
        for path in folder.glob("checkpoint-*")
        if (path / "trainer_state.json").is_file()
    )


def finetune_command(train: Path, output: Path, base: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "spacy_medllm",
        "finetune",
        "--train",
        str(train),
        "--output",
        str(output),
        "--base-model",
        str(base),
        "--max-steps",
        str(MAX_STEPS),
        "--save-steps",
        str(SAVE_STEPS),
        "--batch-size",
        "2",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--lr",
        "1e-2",
        "--warmup-ratio",
        "0",
        "--logging-steps",
        "1",
        "--max-length",
        "512",
        "--num-threads",
        "1",
        "--no-bf16",
    ]


def test_a_killed_finetune_resumes_from_its_checkpoint_to_the_same_adapter(tiny_base, tmp_path):
    """Killed once a checkpoint is complete: the rerun resumes from the last complete one, trains
    only the steps after it, and ends with the adapter of an uninterrupted run."""
    import torch
    from safetensors.torch import load_file

    train = write_jsonl(tmp_path / "train.jsonl", gold_lines(GOLD))
    output = tmp_path / "killed"
    checkpoints = output / "checkpoints"
    command = finetune_command(train, output, tiny_base)
    code = run_and_kill(command, lambda: bool(complete_checkpoints(checkpoints)), tmp_path / "log")
    assert code == -signal.SIGKILL, (tmp_path / "log").read_text()[-2000:]

    # What the kill left: complete checkpoints, no adapter (it is written at the end only).
    assert not (output / "adapter").exists()
    saved = complete_checkpoints(checkpoints)
    assert saved and saved[-1] < MAX_STEPS, saved
    killed_after = saved[-1]
    for step in saved:
        folder = checkpoints / f"checkpoint-{step}"
        names = {p.name for p in folder.iterdir()}
        assert "adapter_model.safetensors" in names
        assert not names & {"adapter_model.bin", "pytorch_model.bin", "model.safetensors"}
        assert load_file(str(folder / "adapter_model.safetensors"))  # whole, loadable weights
        for path in folder.glob("*.json"):
            json.loads(path.read_text(encoding="utf8"))  # no half-written JSON
        assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == step
        other = {n for n in names if not n.endswith((".json", ".safetensors", ".md"))}
        assert other <= TRAINER_STATE_FILES, other
    half_written = [
        p.name for p in checkpoints.glob("checkpoint-*") if not (p / "trainer_state.json").is_file()
    ]

    run_to_the_end(command)
    adapter = output / "adapter"
    record = json.loads((adapter / "training_record.json").read_text())
    training = record["training"]
    assert training["resumed_from"] == f"checkpoint-{killed_after}"
    assert training["global_step"] == MAX_STEPS
    # The rerun trained exactly the steps after the checkpoint: none lost, none twice.
    steps_now = [entry["step"] for entry in training["log"]]
    assert steps_now == list(range(killed_after + 1, MAX_STEPS + 1))
    done = list(range(1, killed_after + 1)) + steps_now  # for the report (0 and 0 by the above)
    lost = len(set(range(1, MAX_STEPS + 1)) - set(done))
    duplicates = len(done) - len(set(done))
    for name in half_written:  # a checkpoint cut by the kill is deleted or saved again whole
        folder = checkpoints / name
        assert not folder.exists() or (folder / "trainer_state.json").is_file(), name
    assert not [p for p in adapter.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]

    straight = tmp_path / "straight"
    run_to_the_end(finetune_command(train, straight, tiny_base))
    straight_record = json.loads((straight / "adapter" / "training_record.json").read_text())
    assert straight_record["training"]["resumed_from"] is None
    assert training["train_tokens"] == straight_record["training"]["train_tokens"]
    a = load_file(str(adapter / "adapter_model.safetensors"))
    b = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)
    log_figure(
        "interruption",
        "fine-tuning",
        unit="optimizer steps",
        duplicates=duplicates,
        kills=1,
        records_before=killed_after,
        records_after=training["global_step"],
        records_lost=lost,
    )


# -- LLM synthesis ---------------------------------------------------------------------------------

N_SYNTH = 40


@pytest.fixture(scope="module")
def synth_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random generator whose tokenizer knows the synthesis prompts, and the drug facts
    of the shipped pages."""
    pytest.importorskip("torch")
    from spacy_medllm.data.scrape import scrape, write_facts
    from spacy_medllm.data.synth.llm import LLM_PROMPTS
    from tests.tiny_models import build_tiny_causal_lm

    root = tmp_path_factory.mktemp("interrupt_synth")
    model = build_tiny_causal_lm(
        root / "lm",
        [*LLM_PROMPTS.values(), "nausea dizziness metformin headache"],
        max_position_embeddings=1024,
    )
    facts = write_facts(scrape([REPO / "corpus" / "drug_pages"], progress=False).facts, root / "f")
    return {"model": model, "facts": facts}


def synth_command(inputs: dict[str, Path], output: Path, summary: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "spacy_medllm",
        "synth",
        "llm",
        "--facts",
        str(inputs["facts"]),
        "--output",
        str(output),
        "--summary",
        str(summary),
        "--n-en",
        str(N_SYNTH),
        "--n-et",
        "0",
        "--model",
        str(inputs["model"]),
        "--batch-size",
        "1",  # one record per generator call: each is written before the next is asked for
        "--max-new-tokens",
        "32",
    ]


def test_a_killed_llm_synthesis_resumes_without_loss_or_duplicates(synth_inputs, tmp_path):
    """Killed after 3 records: the rerun keeps them byte for byte, asks only for the others, and
    writes the file an uninterrupted run writes."""
    output = tmp_path / "killed.jsonl"
    command = synth_command(synth_inputs, output, tmp_path / "summary.json")

    def three_records() -> bool:
        return output.is_file() and output.read_bytes().count(b"\n") >= 3

    code = run_and_kill(command, three_records, tmp_path / "log")
    assert code == -signal.SIGKILL, (tmp_path / "log").read_text()[-2000:]
    at_kill = output.read_bytes()
    whole = at_kill[: at_kill.rfind(b"\n") + 1]  # a line cut by the kill is not finished work
    before = [json.loads(line) for line in whole.decode("utf8").splitlines()]
    assert 3 <= len(before) < N_SYNTH, "the run was not interrupted mid-way"

    run_to_the_end(command)
    summary = json.loads((tmp_path / "summary.json").read_text())
    after_bytes = output.read_bytes()
    assert after_bytes.startswith(whole)  # records written before the kill are unchanged
    after = [json.loads(line) for line in after_bytes.decode("utf8").splitlines()]  # all JSON
    ids = [record["id"] for record in after]
    assert summary["jobs"] == N_SYNTH
    assert summary["written_now"] == len(after) - len(before)
    rejected = {r["id"] for r in summary["rejected"]}
    assert not rejected & {r["id"] for r in before}  # finished records were not asked again

    straight = tmp_path / "straight.jsonl"
    run_to_the_end(synth_command(synth_inputs, straight, tmp_path / "straight_summary.json"))
    expected = [json.loads(line) for line in straight.read_text(encoding="utf8").splitlines()]
    expected_ids = [record["id"] for record in expected]
    duplicates = len(ids) - len(set(ids))
    lost = len(set(expected_ids) - set(ids))
    assert (lost, duplicates) == (0, 0)
    assert ids == expected_ids and len(ids) + len(rejected) == N_SYNTH
    assert after_bytes == straight.read_bytes()  # greedy decoding: the very same records
    log_figure(
        "interruption",
        "LLM synthesis",
        unit="records",
        duplicates=duplicates,
        kills=1,
        records_before=len(before),
        records_after=len(after),
        records_lost=lost,
    )


# -- evaluation with the response cache ------------------------------------------------------------


def cache_entries(folder: Path) -> dict[str, Path]:
    """The response cache's finished entries by key (not the temporary files being written)."""
    return {
        path.stem: path
        for path in (folder / "v1").glob("*/*.json")
        if not path.name.startswith(".tmp-")
    }


def file_state(path: Path) -> tuple[bytes, int, int]:
    """A file's bytes, inode and modification time: an entry written again (to a temporary file
    renamed into place) has another inode, even with the same bytes."""
    stat = path.stat()
    return path.read_bytes(), stat.st_ino, stat.st_mtime_ns


def evaluate_command(pipeline: Path, gold: Path, output: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "spacy_medllm",
        "evaluate",
        "--pipeline",
        f"tiny={pipeline}",
        "--gold",
        str(gold),
        "--labels",
        ",".join(LABELS),
        "--output",
        str(output),
        "--stem",
        "eval",
        "--batch-size",
        "1",
        "--no-plot",
    ]


def test_a_killed_evaluation_reuses_its_cached_answers_and_scores_the_same(
    trained,  # noqa: F811
    tmp_path,
):
    """Killed after 3 answers were cached: the rerun reads them (the files are not written again),
    generates the rest, and scores exactly as an uninterrupted run."""
    from spacy_medllm.pipeline.assemble import build_pipeline
    from spacy_medllm.pipeline.cache import CACHE_ENV, HIT, ResponseCache

    pipeline = tmp_path / "pipeline"
    # batch_size 1: one generator call (and one cache entry) per document
    nlp = build_pipeline(
        model=str(trained["base"]), adapter=str(trained["adapter"]), batch_size=1, max_new_tokens=64
    )
    nlp.to_disk(pipeline)
    # The training texts (the adapter answers them right) and copies with other endings (which it
    # answers however it likes): 30 documents, 30 distinct prompts.
    docs = [*GOLD, *((f"{t} (note {i})", pairs) for i in range(1, 5) for t, pairs in GOLD)]
    gold = write_jsonl(tmp_path / "gold.jsonl", gold_lines(docs))
    cache = tmp_path / "cache"
    env = {**ENV, CACHE_ENV: str(cache)}
    command = evaluate_command(pipeline, gold, tmp_path / "killed")
    code = run_and_kill(command, lambda: len(cache_entries(cache)) >= 3, tmp_path / "log", env)
    assert code == -signal.SIGKILL, (tmp_path / "log").read_text()[-2000:]
    before = {key: file_state(path) for key, path in cache_entries(cache).items()}
    assert 3 <= len(before) < len(docs), "the run was not interrupted mid-way"
    assert not (tmp_path / "killed" / "eval.json").exists()
    reader = ResponseCache(cache)
    assert all(reader.get(key).status == HIT for key in before)  # whole, checksums right

    run_to_the_end(command, env)
    straight_env = {**ENV, CACHE_ENV: str(tmp_path / "straight_cache")}
    run_to_the_end(evaluate_command(pipeline, gold, tmp_path / "straight"), straight_env)

    after = cache_entries(cache)
    # The entries from before the kill were read, not written again (a rewrite is a new file).
    for key, state in before.items():
        assert file_state(after[key]) == state, key
    assert all(reader.get(key).status == HIT for key in after)
    # One entry per distinct prompt, the same ones an uninterrupted run writes: the rerun
    # generated only the documents the killed run had not answered.
    straight_entries = cache_entries(tmp_path / "straight_cache")
    assert len(straight_entries) == len(docs)
    assert after.keys() == straight_entries.keys()
    generated_again = len(after) - len(before)

    report = json.loads((tmp_path / "killed" / "eval.json").read_text("utf8"))
    expected = json.loads((tmp_path / "straight" / "eval.json").read_text("utf8"))
    (system,), (reference,) = report["systems"], expected["systems"]
    assert system["n_docs"] == len(docs) and system["medllm"]["medllm_ner"]["n_errors"] == 0
    ids = [doc["id"] for doc in system["docs"]]
    lost = len({line["id"] for line in gold_lines(docs)} - set(ids))
    duplicates = len(ids) - len(set(ids))
    assert (lost, duplicates) == (0, 0)
    assert system["strict"]["micro"]["tp"] > 0  # the adapter finds entities: scores can differ
    for key in ("strict", "overlap", "confusion", "texts", "predicted", "medllm", "docs"):
        assert system[key] == reference[key], key
    log_figure(
        "interruption",
        "evaluation (response cache)",
        unit="cached answers",
        duplicates=duplicates,
        kills=1,
        records_before=len(before),
        records_after=len(after),
        records_lost=lost,
        reused=len(before),
        generated_again=generated_again,
    )
