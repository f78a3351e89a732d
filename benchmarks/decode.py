"""Where a generation's time goes on this machine: reading the prompt (prefill) against decoding
steps, by batch size, for the packaged base model (float32, greedy, KV cache).

For each batch size: the prompt tokens read per second in one forward pass over `--prompt-tokens`
random tokens per row, and the time of one decoding step (one new token per row) after it. A
decoding step reads every weight once whatever the batch size, so where it costs nearly as much
for 8 rows as a prefill of 8 tokens per row would, decoding is bound by memory bandwidth, and
larger batches or smaller weights are what speed it up. Writes training/reports/decode.json/.md.

    nice -n 19 .venv/bin/python -m benchmarks.decode            # about two minutes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from spacy_medllm.generators.hf.generator import HFGenerator
from spacy_medllm.util.machine import machine_info

REPO = Path(__file__).resolve().parents[1]


def measure(model, batch: int, prompt_tokens: int, steps: int, vocab: int, cache_kw: str) -> dict:
    import torch

    generator = torch.Generator().manual_seed(batch)
    ids = torch.randint(100, vocab, (batch, prompt_tokens), generator=generator)
    with torch.inference_mode():
        start = time.perf_counter()
        output = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        prefill = time.perf_counter() - start
        cache = getattr(output, "cache", None) or output.past_key_values
        token = output.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(steps):
            output = model(input_ids=token, use_cache=True, **{cache_kw: cache})
            cache = getattr(output, "cache", None) or output.past_key_values
            token = output.logits[:, -1:].argmax(-1)
        step = (time.perf_counter() - start) / steps
    return {
        "batch": batch,
        "prefill_seconds": round(prefill, 3),
        "prefill_tokens_per_s": round(batch * prompt_tokens / prefill, 1),
        "decode_step_ms": round(step * 1000, 1),
        "decode_tokens_per_s": round(batch / step, 1),
        # how many times a token costs more made by a decoding step than read in a prefill
        "decode_vs_prefill_cost_per_token": round(
            (step / batch) / (prefill / (batch * prompt_tokens)), 1
        ),
    }


def markdown(report: dict) -> str:
    lines = [
        "# Prefill and decoding step by batch size",
        "",
        f"Model {report['model']} ({report['dtype']}, {report['weights_mb']} MB of weights), "
        f"{report['prompt_tokens']} prompt tokens per row, {report['steps']} decoding steps "
        f"averaged; {report['machine']['cpu_count']} CPU(s), torch {report['machine']['torch']} "
        f"with {report['threads']} thread(s).",
        "",
        "| weights | batch | prefill s | prompt tokens/s | decode step ms | new tokens/s "
        "| decode token cost / prefill token cost |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row.get('weights', 'float32')} | {row['batch']} | {row['prefill_seconds']} | "
            f"{row['prefill_tokens_per_s']} | "
            f"{row['decode_step_ms']} | {row['decode_tokens_per_s']} | "
            f"{row['decode_vs_prefill_cost_per_token']} |"
        )
    lines += ["", f"Reproduce: `{report['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8, 16, 32])
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also measure the model with torch's dynamic int8 quantization of its Linear layers "
        "(deprecated in torch 2.13, not used by medllm_ner: what smaller weights would gain)",
    )
    parser.add_argument("--output", default=str(REPO / "training/reports/decode"))
    args = parser.parse_args(argv)

    generator = HFGenerator(model=args.model, num_threads=args.threads)
    generator.initialize()
    model = generator._model
    cache_kw = generator._cache_argument()
    measure(model, 1, 16, 2, model.config.vocab_size, cache_kw)  # warm-up
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = [
        {"weights": "float32"}
        | measure(model, batch, args.prompt_tokens, args.steps, model.config.vocab_size, cache_kw)
        for batch in args.batches
    ]
    if args.int8:
        import warnings

        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic

            quantized = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        rows += [
            {"weights": "int8 (dynamic)"}
            | measure(
                quantized, b, args.prompt_tokens, args.steps, model.config.vocab_size, cache_kw
            )
            for b in args.batches
        ]
    report = {
        "model": args.model,
        "dtype": str(model.dtype).replace("torch.", ""),
        "weights_mb": round(weights / 1e6),
        "prompt_tokens": args.prompt_tokens,
        "steps": args.steps,
        "threads": args.threads,
        "rows": rows,
        "machine": machine_info(),
        "command": "nice -n 19 .venv/bin/python -m benchmarks.decode"
        + (" --int8" if args.int8 else ""),
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf8")
    out.with_suffix(".md").write_text(markdown(report), encoding="utf8")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
