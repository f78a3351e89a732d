"""Do finished fine-tuning runs, voting on each e-mail's strings, reach issue 3's bar?

Reads the records of seed-benchmark reports (`seed_benchmark.json`; no model is run), takes the
LLM pipeline of each, and scores on the seed metric (set-based, exact, case-sensitive):

- each run alone;
- a declared vote: the strings that at least k of the `--vote` runs predicted, for every k;
- the best vote of any subset of all runs at any k, chosen on the test set itself (an optimistic
  upper bound: the choice sees the answers it is scored on);
- the union of every run's correct strings: the highest recall any vote of these runs can reach.

    .venv/bin/python -m benchmarks.seed_vote                       # the committed rank-16/64/128
    runs .venv/bin/python -m benchmarks.seed_vote --run a=path/seed_benchmark.json --run b=...
    --vote a,b

Writes training/reports/experiments/seed_vote/seed_vote.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spacy_medllm.evaluation.seed_metric import set_scores
from spacy_medllm.util.formatting import fmt_score
from spacy_medllm.util.machine import machine_info

REPO = Path(__file__).resolve().parents[1]

EXPERIMENTS = REPO / "training" / "reports" / "experiments"
RUNS = {
    "r64 seed 42": "lora_3ep_r64",
    "r64 seed 7": "lora_3ep_r64_seed7",
    "r64 DoRA": "lora_3ep_r64_dora",
    "r64 dropout 0.1": "lora_3ep_r64_dropout01",
    "r64 5 epochs": "lora_5ep_r64",
    "r128": "lora_3ep_r128",
    "r16 seed 42": "lora_3ep_bf16_shared_prefix",
    "r16 seed 7": "lora_3ep_r16_seed7",
    "Gemma-3-270M r64": "lora_3ep_gemma_r64",
}
# declared before looking at votes: the three 3-epoch rank-64 recipes without dropout
VOTE = ("r64 seed 42", "r64 seed 7", "r64 DoRA")
BAR = (0.92, 0.91)


def load_run(path: str | Path) -> tuple[list[set[str]], list[set[str] | None]]:
    """Gold and predicted string sets per test record of the LLM pipeline in a seed report."""
    report = json.loads(Path(path).read_text(encoding="utf8"))
    pipelines = [s for s in report["systems"] if s["kind"] == "pipeline"]
    if len(pipelines) != 1:
        raise ValueError(f"{path}: expected one pipeline system, found {len(pipelines)}")
    records = pipelines[0]["records"]
    gold = [{text for text, _ in r["gold"]} for r in records]
    predicted = [{text for text, _ in r["predicted"]} if r["parseable"] else None for r in records]
    return gold, predicted


def vote_counts(predictions: Sequence[Sequence[set[str] | None]]) -> list[Counter[str]]:
    """Per record, how many of the runs predicted each string (unparseable = nothing)."""
    return [
        Counter(s for answer in answers for s in (answer or ()))
        for answers in zip(*predictions, strict=True)
    ]


def at_least(counts: Sequence[Counter[str]], k: int) -> list[set[str]]:
    """Per record, the strings counted at least k times."""
    return [{s for s, n in record.items() if n >= k} for record in counts]


def vote(predictions: Sequence[Sequence[set[str] | None]], k: int) -> list[set[str]]:
    """Per record, the strings that at least k of the runs predicted (unparseable = nothing)."""
    if not 1 <= k <= len(predictions):
        raise ValueError(f"k must be between 1 and {len(predictions)}, not {k}")
    return at_least(vote_counts(predictions), k)


def score(gold: Sequence[set[str]], predicted: Sequence[set[str] | None]) -> dict[str, Any]:
    return set_scores(gold, predicted).to_dict()


def needed_for_bar(n_gold: int, precision: float, recall: float) -> dict[str, int]:
    """Fewest correct strings for the recall bar, and most false ones that still keep precision."""
    tp = next(t for t in range(n_gold + 1) if t / n_gold >= recall)
    max_fp = int(tp * (1 - precision) / precision + 1e-9)
    return {"min_tp": tp, "max_fp_at_min_tp": max_fp}


def run(runs: Mapping[str, str | Path], voters: Sequence[str]) -> dict[str, Any]:
    loaded = {name: load_run(path) for name, path in runs.items()}
    gold = next(iter(loaded.values()))[0]
    for name, (other_gold, _) in loaded.items():
        if other_gold != gold:
            raise ValueError(f"{name}: its report scores different gold records")
    preds = {name: p for name, (_, p) in loaded.items()}
    missing = [v for v in voters if v not in preds]
    if missing:
        raise ValueError(f"--vote names runs that are not loaded: {missing}")
    singles = {name: score(gold, p) for name, p in preds.items()}
    declared = [
        {"k": k, **score(gold, vote([preds[v] for v in voters], k))}
        for k in range(1, len(voters) + 1)
    ]
    searched = []
    names = list(preds)
    for m in range(2, len(names) + 1):
        for combo in itertools.combinations(names, m):
            counts = vote_counts([preds[n] for n in combo])  # once per subset, for every k
            for k in range(1, m + 1):
                s = score(gold, at_least(counts, k))
                searched.append({"runs": list(combo), "k": k, **s})
    best_f1 = max(searched, key=lambda s: (s["f1"], s["precision"]))
    at_bar_precision = [s for s in searched if s["precision"] >= BAR[0]]
    best_recall = max(at_bar_precision, key=lambda s: (s["recall"], s["f1"]), default=None)
    reaching = [s for s in searched if s["precision"] >= BAR[0] and s["recall"] >= BAR[1]]
    union_correct = sum(
        len(g & set().union(*(p[i] or set() for p in preds.values()))) for i, g in enumerate(gold)
    )
    n_gold = sum(len(g) for g in gold)
    return {
        "runs": {name: str(path) for name, path in runs.items()},
        "metric": "seed set-based P/R/F1, exact, case-sensitive, 59 test e-mails",
        "n_gold_strings": n_gold,
        "bar": {"precision": BAR[0], "recall": BAR[1], **needed_for_bar(n_gold, *BAR)},
        "single": singles,
        "declared_vote": {"runs": list(voters), "by_k": declared},
        "search": {
            "n_votes": len(searched),
            "best_f1": best_f1,
            "best_recall_at_bar_precision": best_recall,
            "n_reaching_bar": len(reaching),
        },
        "union_correct": {"tp": union_correct, "recall": union_correct / n_gold},
        "machine": machine_info(),
    }


def _row(name: str, s: Mapping[str, Any]) -> str:
    prf = " / ".join(fmt_score(s[k]) for k in ("precision", "recall", "f1"))
    return f"| {name} | {prf} | {s['tp']}/{s['fp']}/{s['fn']} |"


def markdown(result: Mapping[str, Any]) -> str:
    bar = result["bar"]
    lines = [
        "# Votes of finished fine-tuning runs on the seed e-mails",
        "",
        f"Metric: {result['metric']}. {result['n_gold_strings']} gold strings. Issue 3's bar, "
        f"P >= {bar['precision']} and R >= {bar['recall']}, needs at least {bar['min_tp']} "
        f"correct strings with at most {bar['max_fp_at_min_tp']} false ones.",
        "",
        "| System | Seed P / R / F1 | TP/FP/FN |",
        "|---|---|---|",
    ]
    lines += [_row(name, s) for name, s in result["single"].items()]
    voters = ", ".join(result["declared_vote"]["runs"])
    lines += [
        _row(f"vote of {voters}: at least {s['k']}", s) for s in result["declared_vote"]["by_k"]
    ]
    search = result["search"]
    best = search["best_f1"]
    lines.append(
        _row(
            f"best F1 of {search['n_votes']} votes, chosen on the test set: "
            f"{', '.join(best['runs'])}, at least {best['k']}",
            best,
        )
    )
    best_r = search["best_recall_at_bar_precision"]
    if best_r is not None:
        lines.append(
            _row(
                f"best recall at P >= {bar['precision']}, chosen on the test set: "
                f"{', '.join(best_r['runs'])}, at least {best_r['k']}",
                best_r,
            )
        )
    union = result["union_correct"]
    lines += [
        "",
        f"Votes that reach the bar: {search['n_reaching_bar']} of {search['n_votes']}. "
        f"Correct strings in the union of all runs: {union['tp']} (recall "
        f"{fmt_score(union['recall'])}), the most any vote of these runs can find.",
        "",
        "Reproduce: `.venv/bin/python -m benchmarks.seed_vote` (reads the runs' committed "
        "seed_benchmark.json; no model is run).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="NAME=SEED_BENCHMARK_JSON",
        help="a run's seed_benchmark.json (default: the committed experiments)",
    )
    parser.add_argument("--vote", default=",".join(VOTE), help="comma-separated run names")
    parser.add_argument("--output", type=Path, default=EXPERIMENTS / "seed_vote")
    args = parser.parse_args(argv)
    if args.run:
        runs = dict(spec.split("=", 1) for spec in args.run)
    else:
        runs = {name: EXPERIMENTS / folder / "seed_benchmark.json" for name, folder in RUNS.items()}
    result = run(runs, [v.strip() for v in args.vote.split(",") if v.strip()])
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "seed_vote.json").write_text(json.dumps(result, indent=2) + "\n", "utf8")
    text = markdown(result)
    (args.output / "seed_vote.md").write_text(text, "utf8")
    print(text)


if __name__ == "__main__":
    main()
