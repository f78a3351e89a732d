"""Serving benchmark: the fine-tuned model in process and served by llama.cpp, side by side.

Systems, all with the same base model and LoRA adapter, greedy, the same prompt:

- `in-process HF`: `medllm_ner` with the transformers backend (the seed pipeline's settings);
- `llama-server f16`, `llama-server q8_0`, `llama-server q4_k_m`: the merged model exported
  with `export-gguf` (llama.cpp's converters), served by llama.cpp's `llama-server` on this
  machine (`--parallel` slots, continuous batching, the same threads), `medllm_ner` with the
  OpenAI backend sending `--parallel` requests at a time;
- `spacy-llm NER.v3`: spacy-llm's NER task on the same model (`benchmarks.speed`).

Each is scored with `evaluate_pipeline` (strict seqeval F1) on the test split of each corpus,
one system at a time (a server runs only while its system does). Memory: the client process's
peak RSS, and for served systems also the server's (VmHWM). Writes `<output>.json`, `.md`,
`.png`; earlier results with the same setup are kept, so systems can be run one call at a time.

    .venv/bin/python -m benchmarks.serving --adapter training/seed_lora --limit 20
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spacy_medllm.util.formatting import fmt_mib, fmt_rate, fmt_score, json_default, markdown_table
from spacy_medllm.util.machine import machine_info
from spacy_medllm.util.memory import PeakMemory

DEFAULT_ADAPTER = "training/seed_lora"
DEFAULT_EXPORT = "training/serving/seed"
DEFAULT_OUTPUT = "training/reports/serving/serving"
CORPORA = ("seed-ae-emails", "ade-corpus-v2")
IN_PROCESS = "in-process HF"
SERVED = {"llama-server f16": "merged-f16", "llama-server q8_0": "merged-q8_0",
          "llama-server q4_k_m": "merged-q4_k_m"}  # fmt: skip
SPACY_LLM = "spacy-llm NER.v3"
SYSTEMS = (IN_PROCESS, *SERVED, SPACY_LLM)
GOALS = {"parity_f16": 0.01, "parity_q8_0": 0.02, "speedup_vs_hf": 3.0, "speedup_vs_spacy_llm": 5.0}
SETUP_KEYS = (
    "model", "adapter_sha256", "limit", "threads", "parallel", "constrained", "server_args",
)  # fmt: skip
WARM_UP_TEXT = "After starting aspirin I had a headache."


def server_peak_mib(pid: int) -> float | None:
    """The server process's peak resident memory (VmHWM), MiB; None off Linux."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def draft_counts(log: Path) -> dict[str, int] | None:
    """Speculative decoding's drafted and accepted tokens, summed over the server log's
    "draft acceptance = ... (A accepted / G generated)" lines; None when nothing was drafted."""
    import re

    pattern = re.compile(r"draft acceptance = [\d.]+ \(\s*(\d+) accepted /\s*(\d+) generated\)")
    accepted = generated = 0
    for match in pattern.finditer(log.read_text(encoding="utf8", errors="replace")):
        accepted += int(match.group(1))
        generated += int(match.group(2))
    return {"accepted": accepted, "generated": generated} if generated else None


def score(nlp: Any, name: str, examples: Sequence[dict], labels: Sequence[str]) -> dict[str, Any]:
    from spacy_medllm.evaluation.evaluate import evaluate_pipeline

    nlp(WARM_UP_TEXT)
    result = evaluate_pipeline(
        nlp, examples, name=name, labels=labels, include_docs=False, progress=False
    )
    speed = result["speed"]
    return {
        "name": name,
        "seconds": speed["seconds"],
        "n_docs": speed["n_docs"],
        "n_words": speed["n_words"],
        "docs_per_s": speed["docs_per_s"],
        "words_per_s": speed["words_per_s"],
        "f1": result["strict"]["micro"]["f1"],
        "precision": result["strict"]["micro"]["precision"],
        "recall": result["strict"]["micro"]["recall"],
        "medllm": result.get("medllm"),
    }


def run_in_process(name: str, args: argparse.Namespace, examples, labels) -> dict[str, Any]:
    from benchmarks.speed import OURS, SPACY_LLM_NER, build_system, pipeline_generator

    system = OURS if name == IN_PROCESS else SPACY_LLM_NER
    nlp = build_system(system, args.model, args.adapter_dir, args.batch_size, args.max_new_tokens)
    generator = pipeline_generator(nlp)
    generator.num_threads = args.threads
    if name == IN_PROCESS and args.constrained != "off":
        generator.constrained = args.constrained
    generator.initialize()
    result = score(nlp, name, examples, labels)
    result["dtype"] = generator.describe()["dtype"]
    return result


def run_served(name: str, args: argparse.Namespace, examples, labels) -> dict[str, Any]:
    from spacy_medllm.pipeline.assemble import build_pipeline
    from spacy_medllm.serving.llama_server import LlamaServer, settings_for_export

    kind = SERVED[name]
    log = Path(args.output).parent / f"{kind}.server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    settings = settings_for_export(
        args.export,
        kind,
        threads=args.threads,
        parallel=args.parallel,
        log_path=log,
        extra_args=list(args.server_arg),
    )
    with LlamaServer.start(settings) as server:
        nlp = build_pipeline(
            model=settings.alias,
            adapter=args.export,
            base_url=server.base_url,
            constrained="schema" if args.constrained != "off" else "off",
            batch_size=4 * args.parallel,
            max_new_tokens=args.max_new_tokens,
            max_concurrency=args.parallel,
        )
        result = score(nlp, name, examples, labels)
        result["server_peak_rss_mib"] = server_peak_mib(server.process.pid)
    result["dtype"] = kind.split("-", 1)[1]
    result["drafts"] = draft_counts(log)
    return result


def comparisons(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's bar: served F1 against in-process, served speed against HF and spacy-llm."""
    out: dict[str, Any] = {}
    base, spacy_llm = results.get(IN_PROCESS), results.get(SPACY_LLM)
    for name in SERVED:
        served = results.get(name)
        if not served:
            continue
        entry: dict[str, Any] = {}
        if base:
            entry["f1_delta_vs_hf"] = served["f1"] - base["f1"]
            entry["speedup_vs_hf"] = served["docs_per_s"] / base["docs_per_s"]
        if spacy_llm:
            entry["speedup_vs_spacy_llm"] = served["docs_per_s"] / spacy_llm["docs_per_s"]
        out[name] = entry
    return out


def run(args: argparse.Namespace, progress: Callable[[str], None] = print) -> dict[str, Any]:
    from spacy_medllm.core.adapter_settings import load_prompt_settings
    from spacy_medllm.corpora.registry import load_corpus
    from spacy_medllm.generators.hf.loading import check_adapter_dir
    from spacy_medllm.generators.packaged import file_sha256
    from spacy_medllm.serving import tools
    from spacy_medllm.serving.gguf_export import MANIFEST, export_gguf

    adapter_dir = check_adapter_dir(
        Path(args.adapter) / "adapter"
        if (Path(args.adapter) / "adapter").is_dir()
        else args.adapter
    )
    args.adapter_dir = str(adapter_dir)
    sha = file_sha256(adapter_dir / "adapter_model.safetensors")
    manifest_path = Path(args.export) / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    wanted = [SERVED[s].split("-", 1)[1] for s in args.systems if s in SERVED]
    if wanted and (
        manifest is None
        or manifest["adapter_sha256"] != sha
        or any(f"merged-{t}" not in manifest["files"] for t in wanted)
    ):
        progress(f"export-gguf {adapter_dir} -> {args.export} ({', '.join(wanted)})")
        manifest = export_gguf(
            adapter_dir, args.export, types=sorted(set(wanted) | {"f16"}), lora=False
        )
    labels = list(load_prompt_settings(adapter_dir)["labels"])
    report: dict[str, Any] = {
        "model": args.model,
        "adapter": str(args.adapter),
        "adapter_sha256": sha,
        "limit": args.limit,
        "threads": args.threads,
        "parallel": args.parallel,
        "constrained": args.constrained,
        "server_args": list(args.server_arg),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "labels": labels,
        "export": manifest
        and {k: v for k, v in manifest.items() if k in ("files", "llama_cpp_python")},
        "llama_cpp": tools.version(),
        "goals": GOALS,
        "machine": machine_info(),
        "command": args.command,
        "corpora": {},
    }
    out = Path(args.output)
    if out.with_suffix(".json").is_file():
        earlier = json.loads(out.with_suffix(".json").read_text(encoding="utf8"))
        if all((earlier.get(key) or None) == (report[key] or None) for key in SETUP_KEYS):
            report["corpora"] = earlier.get("corpora", {})
    for corpus in args.corpora:
        examples = load_corpus(corpus, "test", labels=labels, limit=args.limit)
        entry = report["corpora"].setdefault(corpus, {"results": {}})
        entry["n_docs"] = len(examples)
        for name in args.systems:
            progress(f"{name} on {corpus}:test ({len(examples)} documents)")
            with PeakMemory() as memory:
                if name in SERVED:
                    result = run_served(name, args, examples, labels)
                else:
                    result = run_in_process(name, args, examples, labels)
            result["memory"] = memory.to_dict()
            result["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            entry["results"][name] = result
            entry["results"] = {k: entry["results"][k] for k in SYSTEMS if k in entry["results"]}
            entry["comparisons"] = comparisons(entry["results"])
            gc.collect()
            progress(
                f"  {fmt_rate(result['docs_per_s'])} docs/s, {fmt_rate(result['words_per_s'])} "
                f"words/s, F1 {fmt_score(result['f1'])}"
            )
            write_report(report, out)
    return report


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    sample = f"the first {report['limit']} documents of " if report["limit"] else ""
    extra = report.get("server_args") or []
    server_args = f", llama-server also given `{' '.join(extra)}`" if extra else ""
    lines = [
        "# Serving: the fine-tuned model in process and behind llama.cpp's server",
        "",
        f"Model {report['model']} + LoRA `{report['adapter']}` (sha256 "
        f"{report['adapter_sha256'][:12]}), greedy, constrained {report['constrained']}; "
        f"{sample}each corpus's test split. {report['threads']} threads for every system; the "
        f"server with {report['parallel']} slots (continuous batching) and as many requests in "
        f"flight{server_args}. llama.cpp from llama-cpp-python {report['llama_cpp']}. Machine: "
        f"{machine.get('cpus_available', machine.get('cpu_count'))} CPU(s), "
        f"torch {machine.get('torch')}, {machine.get('platform')}.",
        "",
    ]
    header = ["corpus", "system", "weights", "docs", "docs/s", "words/s", "F1 (strict)", "P", "R",
              "client peak MiB", "server peak MiB", "x in-process", "x spacy-llm"]  # fmt: skip
    rows = []
    for corpus, entry in report["corpora"].items():
        for name, r in entry["results"].items():
            c = entry.get("comparisons", {}).get(name, {})
            rows.append(
                [
                    corpus, name, r.get("dtype", ""), str(r["n_docs"]), fmt_rate(r["docs_per_s"]),
                    fmt_rate(r["words_per_s"]), fmt_score(r["f1"]), fmt_score(r["precision"]),
                    fmt_score(r["recall"]), fmt_mib((r.get("memory") or {}).get("peak_rss_mib")),
                    fmt_mib(r.get("server_peak_rss_mib")),
                    f"{c['speedup_vs_hf']:.2f}" if "speedup_vs_hf" in c else "",
                    f"{c['speedup_vs_spacy_llm']:.2f}" if "speedup_vs_spacy_llm" in c else "",
                ]
            )  # fmt: skip
    lines.append(markdown_table(header, rows))
    drafted = [
        f"{corpus}, {name}: {r['drafts']['accepted']:,} of {r['drafts']['generated']:,} drafted "
        f"tokens accepted ({r['drafts']['accepted'] / r['drafts']['generated']:.0%})"
        for corpus, entry in report["corpora"].items()
        for name, r in entry["results"].items()
        if r.get("drafts")
    ]
    if drafted:
        lines += ["", "Speculative decoding (from the server log): " + "; ".join(drafted) + "."]
    lines += ["", "Against the bar (issue 28):", ""]
    for corpus, entry in report["corpora"].items():
        for name, c in entry.get("comparisons", {}).items():
            parts = []
            if "f1_delta_vs_hf" in c:
                limit = GOALS["parity_q8_0"] if "q8_0" in name else GOALS["parity_f16"]
                ok = abs(c["f1_delta_vs_hf"]) <= limit if "q4" not in name else None
                verdict = "" if ok is None else (" (met)" if ok else " (not met)")
                parts.append(f"F1 {c['f1_delta_vs_hf']:+.3f} vs in-process{verdict}")
            if "speedup_vs_hf" in c:
                ok = c["speedup_vs_hf"] >= GOALS["speedup_vs_hf"]
                parts.append(
                    f"{c['speedup_vs_hf']:.2f} x its docs/s ({'met' if ok else 'not met'})"
                )
            if "speedup_vs_spacy_llm" in c:
                ok = c["speedup_vs_spacy_llm"] >= GOALS["speedup_vs_spacy_llm"]
                parts.append(
                    f"{c['speedup_vs_spacy_llm']:.2f} x spacy-llm's ({'met' if ok else 'not met'})"
                )
            lines.append(f"- {corpus}, {name}: " + "; ".join(parts))
    lines += [
        "",
        "docs/s and words/s: wall time of `nlp.pipe` over the texts after a warm-up document "
        "(models loaded, server ready). F1: strict exact spans (seqeval IOB2, micro). Bar: served "
        "f16 within 1 point of in-process F1, q8_0 within 2; served throughput at least 3 x "
        "in-process and 5 x spacy-llm NER.v3. Server peak: the llama-server process's VmHWM.",
        "",
        f"Reproduce: `{report['command']}`",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    """F1 against words/s per system and corpus (log x)."""
    from spacy_medllm.evaluation.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    markers = dict(zip(report["corpora"], "os^D", strict=False))
    for corpus, entry in report["corpora"].items():
        for name, r in entry["results"].items():
            if r.get("words_per_s"):
                ax.scatter(r["words_per_s"], r["f1"], marker=markers[corpus], s=50)
                ax.annotate(f"{name}", (r["words_per_s"], r["f1"]), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("words per second (log)")
    ax.set_ylabel("strict F1")
    ax.set_title("Serving: " + ", ".join(f"{m} {c}" for c, m in markers.items()))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False, default=json_default) + "\n", "utf8"
    )
    output.with_suffix(".md").write_text(markdown(report), "utf8")
    plot(report, output.with_suffix(".png"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--adapter", default=DEFAULT_ADAPTER)
    parser.add_argument(
        "--export", default=DEFAULT_EXPORT, help="export-gguf folder (made if needed)"
    )
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=CORPORA)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--constrained", default="off", choices=("off", "schema"))
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="an extra llama-server argument (repeat; write --server-arg=--flag)",
    )
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="path without suffix")
    args = parser.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    args.command = ".venv/bin/python -m benchmarks.serving " + shlex.join(given)
    report = run(args)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
