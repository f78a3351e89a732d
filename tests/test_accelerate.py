"""`finetune` beyond one process: `accelerate launch` with two CPU processes (gloo), tiny model.

The command under test is the real one, `accelerate launch ... -m spacy_medllm finetune`, on a
tiny random Llama. A probe (a `sitecustomize` module put first on PYTHONPATH for the launched
processes) records, per rank, a hash of every training record the collator receives, with the
world size and the torch.distributed backend; the test then checks that the two ranks trained on
disjoint halves of the data, together all of it, and that exactly one adapter was saved.

On a machine without GPUs, accelerate 1.x's `--cpu --num_processes 2` starts one process only
(its multi-CPU launcher is mpirun, with `--mpirun_hostfile`); `--multi_gpu --num_processes 2`
starts two processes through torch's elastic launcher, and on a CPU-only machine they train on
the CPU with the gloo backend. That is the command tested here (docs/batch.md).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.gold_examples import GOLD, LABELS, VOCAB_TEXTS

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

ROOT = Path(__file__).resolve().parent.parent

PROBE = '''"""Test probe: record, per rank, which training records the collator receives."""
import os

_where = os.environ.get("MEDLLM_PROBE_DIR")
if _where:
    import hashlib
    import json

    from spacy_medllm.training import collate

    _original = collate.PaddingCollator.__call__

    def _recording(self, features, *args, **kwargs):
        import torch.distributed as dist

        backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
        rank = os.environ.get("RANK", "none")
        with open(os.path.join(_where, "rank-" + rank + ".jsonl"), "a") as handle:
            for feature in features:
                ids = json.dumps([int(i) for i in feature["input_ids"]])
                line = {
                    "pid": os.getpid(),
                    "world_size": os.environ.get("WORLD_SIZE"),
                    "backend": backend,
                    "record": hashlib.sha1(ids.encode()).hexdigest(),
                }
                handle.write(json.dumps(line) + "\\n")
        return _original(self, features, *args, **kwargs)

    collate.PaddingCollator.__call__ = _recording
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_finetune_on_two_cpu_processes_trains_each_rank_on_its_own_half(tmp_path) -> None:
    from .tiny_models import build_tiny_causal_lm

    base = build_tiny_causal_lm(tmp_path / "base", VOCAB_TEXTS, max_position_embeddings=512)
    train = tmp_path / "train.jsonl"
    with train.open("w", encoding="utf8") as handle:
        for text, pairs in GOLD:
            entities = [
                {"start": text.index(s), "end": text.index(s) + len(s), "label": label}
                for s, label in pairs
            ]
            handle.write(json.dumps({"text": text, "entities": entities}) + "\n")
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "sitecustomize.py").write_text(PROBE, encoding="utf8")
    seen = tmp_path / "seen"
    seen.mkdir()
    output = tmp_path / "lora"
    steps = len(GOLD) // 2  # one record per rank and step: one epoch in all
    command = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "spacy_medllm",
        "finetune",
        "--train",
        str(train),
        "--base-model",
        str(base),
        "--labels",
        ",".join(LABELS),
        "--output",
        str(output),
        "--max-steps",
        str(steps),
        "--batch-size",
        "1",
        "--grad-accum",
        "1",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--lr",
        "1e-2",
        "--max-length",
        "512",
        "--num-threads",
        "1",
        "--no-bf16",
        "--save-steps",
        str(steps),
        "--warmup-ratio",
        "0",
        "--max-empty-share",
        "none",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "probe"), str(ROOT)]),
        "MEDLLM_PROBE_DIR": str(seen),
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    by_rank = {
        path.stem: [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted(seen.glob("rank-*.jsonl"))
    }
    assert sorted(by_rank) == ["rank-0", "rank-1"]  # two processes, each a rank
    lines = [line for rank in by_rank.values() for line in rank]
    assert {(line["world_size"], line["backend"]) for line in lines} == {("2", "gloo")}
    assert len({line["pid"] for line in lines}) == 2
    records = {
        rank: Counter(line["record"] for line in rank_lines) for rank, rank_lines in by_rank.items()
    }
    assert all(sum(counts.values()) == steps for counts in records.values())
    assert not set(records["rank-0"]) & set(records["rank-1"])  # disjoint halves
    assert len(set(records["rank-0"]) | set(records["rank-1"])) == len(GOLD)  # all of the data

    adapters = sorted(
        p.relative_to(output).as_posix() for p in output.rglob("adapter_model.safetensors")
    )
    assert adapters == [
        "adapter/adapter_model.safetensors",
        f"checkpoints/checkpoint-{steps}/adapter_model.safetensors",
    ]
    record = json.loads((output / "adapter" / "training_record.json").read_text())
    assert record["training"]["global_step"] == steps
    assert record["training"]["epoch"] == pytest.approx(1.0)  # 2 ranks x steps = every record
    assert record["data"]["n_records"] == len(GOLD)
    config = json.loads((output / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base)
