"""Benchmark LoRA fine-tuning speed on this machine: bf16 autocast and the shared prompt prefix.

Each setting trains the same few steps (same data, seed and schedule) in its own process, from the
seed e-mails by default, and reports training tokens/s (prompt + answer, padding excluded) over the
steps after the first (it warms up), the minutes one epoch over the training records takes at that
rate, the last logged loss (the settings compute the same thing, so the losses should agree
closely) and the training loop's peak resident memory (from the training record). Writes JSON and
Markdown.

    .venv/bin/python -m benchmarks.finetune                 # 4 settings x 20 steps, ~6 min
    .venv/bin/python -m benchmarks.finetune --steps 40 --output training/reports/experiments/x

bf16 settings run only where the CPU (or GPU) computes bfloat16 natively.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from spacy_medllm.util.formatting import fmt_rate, markdown_table
from spacy_medllm.util.machine import (
    cpu_supports_bf16,
    machine_info,
)

REPO = Path(__file__).resolve().parents[1]

# name: (bf16, share_prefix, gradient_checkpointing)
SETTINGS = {
    "bf16, shared prefix": (True, True, False),
    "bf16": (True, False, False),
    "float32, shared prefix": (False, True, False),
    "float32": (False, False, False),
    # recomputes each layer's activations in the backward pass instead of keeping them: memory
    # for time (the shared prefix is off under checkpointing); not in the default set
    "bf16, gradient checkpointing": (True, False, True),
}
DEFAULT_SETTINGS = [name for name, (_, _, checkpointing) in SETTINGS.items() if not checkpointing]


def run_setting(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    bf16, share, checkpointing = SETTINGS[name]
    output = workdir / name.replace(", ", "_").replace(" ", "_")
    command = [
        sys.executable, "-m", "spacy_medllm", "finetune",
        "--train", str(args.train), "--exclude", str(args.exclude),
        "--labels", args.labels, "--base-model", args.base_model, "--output", str(output),
        "--max-steps", str(args.steps), "--logging-steps", str(args.logging_steps),
        "--save-steps", str(args.steps + 1), "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--num-threads", str(args.num_threads), "--no-resume",
        "--bf16" if bf16 else "--no-bf16",
        "--share-prefix" if share else "--no-share-prefix",
        "--gradient-checkpointing" if checkpointing else "--no-gradient-checkpointing",
        "--lora-r", str(args.lora_r), "--lora-alpha", str(2 * args.lora_r),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: fine-tuning failed\n{done.stderr[-3000:]}")
    record = json.loads((output / "adapter" / "training_record.json").read_text(encoding="utf8"))
    log = record["training"]["log"]
    # From the first logged step (it warms up) to the last: --steps > --logging-steps, so the log
    # has at least two entries.
    first, last = log[0], log[-1]
    rate = (last["tokens_seen"] - first["tokens_seen"]) / (last["seconds"] - first["seconds"])
    data = record["data"]
    epoch_tokens = data["prompt_tokens"] + data["completion_tokens"]
    return {
        "setting": name,
        "bf16": record["effective"]["bf16"],
        "shared_prefix": record["effective"].get("shared_prefix"),
        "gradient_checkpointing": record["settings"].get("gradient_checkpointing"),
        "steps": record["training"]["global_step"],
        "tokens_per_second": rate,
        "tokens_per_second_all_steps": record["training"]["tokens_per_second"],
        "epoch_tokens": epoch_tokens,
        "n_records": data["n_records"],
        "minutes_per_epoch": epoch_tokens / rate / 60,
        "final_loss": record["training"]["final_loss"],
        "losses": [entry["loss"] for entry in log],
        # the training loop's peak resident memory, as the training record keeps it
        "peak_rss_mib": record["training"]["memory"]["peak_rss_mib"],
        "torch_threads": record["effective"]["torch_threads"],
    }


def to_markdown(report: dict) -> str:
    results = report["results"]
    base = next((r for r in results if r["setting"] == "float32"), None)
    rows = []
    for r in results:
        speedup = r["tokens_per_second"] / base["tokens_per_second"] if base else None
        rows.append(
            [
                r["setting"],
                fmt_rate(r["tokens_per_second"]),
                f"{speedup:.2f}x" if speedup else "n/a",
                f"{r['minutes_per_epoch']:.1f}",
                f"{r['final_loss']:.4f}",
                f"{r['peak_rss_mib']:.0f}" if r["peak_rss_mib"] else "n/a",
            ]
        )
    header = ["Setting", "tokens/s", "x float32", "min per epoch", "last loss", "peak RSS MiB"]
    machine = ", ".join(f"{k} {v}" for k, v in report["machine"].items())
    return (
        f"# LoRA fine-tuning speed ({report['base_model']}, {report['steps']} steps, batch "
        f"{report['batch_size']}, lr {report['learning_rate']:g}, LoRA rank "
        f"{report.get('lora_r', 16)})\n\n"
        f"Data: {report['train']} ({report['n_records']} records, "
        f"{report['epoch_tokens']:,} tokens per epoch). Tokens/s: prompt + answer tokens, "
        "padding excluded, over the steps after the first (it warms up); each setting in its "
        "own process; "
        "`python -m benchmarks.finetune`.\n\n"
        f"{markdown_table(header, rows)}\n\nMachine: {machine}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, default=REPO / "corpus/seed_ae_emails/train.json")
    parser.add_argument("--exclude", type=Path, default=REPO / "corpus/seed_ae_emails/test.json")
    parser.add_argument("--labels", default="DRUG,ADVERSE_EVENT")
    parser.add_argument("--base-model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--logging-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-threads", type=int, default=0)
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2 x rank)")
    parser.add_argument(
        "--settings",
        nargs="*",
        choices=sorted(SETTINGS),
        default=None,
        help=f"default: {', '.join(DEFAULT_SETTINGS)}",
    )
    parser.add_argument(
        "--output", type=Path, default=REPO / "training/reports/experiments/finetune_speed"
    )
    args = parser.parse_args()
    if args.steps <= args.logging_steps:
        parser.error("--steps must be larger than --logging-steps")
    names = args.settings or DEFAULT_SETTINGS
    if not cpu_supports_bf16():
        names = [n for n in names if not SETTINGS[n][0]]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        for name in tqdm(names, desc="settings"):
            results.append(run_setting(name, args, Path(tmp)))
            tqdm.write(
                f"{name}: {results[-1]['tokens_per_second']:.0f} tokens/s, "
                f"{results[-1]['minutes_per_epoch']:.1f} min per epoch"
            )
    first = results[0]
    report = {
        "train": str(
            args.train.relative_to(REPO) if args.train.is_relative_to(REPO) else args.train
        ),
        "base_model": args.base_model,
        "steps": args.steps,
        "logging_steps": args.logging_steps,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "lora_r": args.lora_r,
        "epoch_tokens": first["epoch_tokens"],
        "n_records": first["n_records"],
        "machine": {**machine_info(), "cpu_bf16": cpu_supports_bf16()},
        "results": results,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "finetune_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output / "finetune_speed.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
