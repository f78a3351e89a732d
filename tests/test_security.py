"""Security checks: no pickle in what the project writes or loads, no remote code, API keys never
written anywhere, and no network access unless a remote backend is configured.

- The code: no `trust_remote_code` other than False, `torch.load` only with weights_only=True, no
  pickle, dill, joblib, `torch.save`, `allow_pickle=True` or `save_pretrained(...,
  safe_serialization=False)` (checked on the syntax tree of spacy_medllm/, benchmarks/ and
  scripts/).
- The artefacts: pipelines saved with either backend, response caches, records and outputs are
  scanned for pickles by their bytes (pickle protocol headers, torch's zip format, numpy object
  arrays), not only by their names.
- The key: planted in the environment, a run with the OpenAI backend (a scripted server that
  checks the key, and one that echoes it back in an error; the real llama.cpp server when slow
  tests run) writes pipelines, caches, records, logs at DEBUG and `extract` output: the key is in
  none of those files.
- The network: the transformers path runs a tiny model with every non-loopback connection and
  name lookup refused, and the hub's offline switches unset: no attempt is made.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin

from spacy_medllm import get_record
from spacy_medllm.cli import main
from spacy_medllm.core.records import summarise_records
from tests.reliability_log import log_figure
from tests.servers import LLAMA_SERVER_MODEL, FakeOpenAIServer

ROOT = Path(__file__).resolve().parent.parent
CODE_FOLDERS = ("spacy_medllm", "benchmarks", "scripts")
SECRET = "sk-medllm-planted-3f9a1c7e2b8d4f60-SECRET"
KEY_ENV = "MEDLLM_TEST_PLANTED_KEY"
TEXTS = ["After starting Abilify I had nausea.", "Aspirin gave me a rash."]
PICKLE_MODULES = {"pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve"}
# Trainer checkpoints (resume state of a fine-tuning run, never published): transformers writes
# them with torch.save and reads them back with torch.load(weights_only=True), its restricted
# unpickler; training_args.bin is never read. Published adapters refuse pickles
# (training/checkpoints.py).
RESUME_STATE = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt", "training_args.bin"}


# -- the code --------------------------------------------------------------------------------------


def python_files() -> list[Path]:
    return sorted(p for folder in CODE_FOLDERS for p in (ROOT / folder).rglob("*.py"))


def _call_name(node: ast.Call) -> str:
    parts, target = [], node.func
    while isinstance(target, ast.Attribute):
        parts.append(target.attr)
        target = target.value
    if isinstance(target, ast.Name):
        parts.append(target.id)
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def unsafe_code(path: Path) -> list[str]:
    """What in `path` could load or write a pickle, or run a model's own code."""
    problems = []
    tree = ast.parse(path.read_text(encoding="utf8"))
    where = path.relative_to(ROOT)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                if name and name.split(".")[0] in PICKLE_MODULES:
                    problems.append(f"{where}:{node.lineno} imports {name}")
        if isinstance(node, ast.Dict):  # {"trust_remote_code": True} passed as **kwargs
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "trust_remote_code":
                    if not (isinstance(value, ast.Constant) and value.value is False):
                        problems.append(f"{where}:{node.lineno} trust_remote_code not False")
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        remote = _keyword(node, "trust_remote_code")
        if remote is not None and not (isinstance(remote, ast.Constant) and remote.value is False):
            problems.append(f"{where}:{node.lineno} {name}(trust_remote_code=...) not False")
        if name.endswith("torch.load"):
            weights_only = _keyword(node, "weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                problems.append(f"{where}:{node.lineno} {name} without weights_only=True")
        if name.endswith("torch.save"):
            problems.append(f"{where}:{node.lineno} torch.save writes a pickle")
        pickled = _keyword(node, "allow_pickle")
        if pickled is not None and not (isinstance(pickled, ast.Constant) and not pickled.value):
            problems.append(f"{where}:{node.lineno} {name}(allow_pickle=...)")
        if name.endswith("read_pickle") or name.endswith("to_pickle"):
            problems.append(f"{where}:{node.lineno} {name}")
        safe = _keyword(node, "safe_serialization")
        if safe is not None and isinstance(safe, ast.Constant) and safe.value is False:
            problems.append(f"{where}:{node.lineno} {name}(safe_serialization=False)")
    return problems


def test_the_code_loads_no_pickle_and_runs_no_remote_code():
    files = python_files()
    assert len(files) > 50
    problems = [problem for path in files for problem in unsafe_code(path)]
    assert problems == []
    log_figure("security", "code scanned for pickle and remote code", files=len(files), found=0)


def test_the_code_scan_catches_what_it_looks_for(tmp_path, monkeypatch):
    bad = tmp_path / "spacy_medllm" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        textwrap.dedent(
            """
            import pickle
            import torch
            torch.load("x.pt")
            torch.load("y.pt", weights_only=False)
            torch.save({}, "z.pt")
            AutoModel.from_pretrained("m", trust_remote_code=True)
            kwargs = {"trust_remote_code": flag}
            numpy.load("a.npy", allow_pickle=True)
            model.save_pretrained("out", safe_serialization=False)
            """
        )
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    problems = unsafe_code(bad)
    assert len(problems) == 8, problems


# -- the artefacts ---------------------------------------------------------------------------------


def pickle_kind(path: Path) -> str | None:
    """Why the file at `path` is (or holds) a pickle, or None."""
    with open(path, "rb") as handle:
        head = handle.read(256)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"pickle protocol {head[1]}"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                if any(name.endswith(".pkl") for name in archive.namelist()):
                    return "torch.save archive (data.pkl)"
        except zipfile.BadZipFile:
            return None
    if head.startswith(b"\x93NUMPY") and b"'descr': '|O'" in head:
        return "numpy object array (pickled)"
    return None


def pickles_under(folder: Path, allowed: set[str] = frozenset()) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in allowed:
            kind = pickle_kind(path)
            if kind:
                found.append(f"{path.relative_to(folder)}: {kind}")
    return found


def test_the_pickle_detector_sees_pickles(tmp_path):
    import pickle as detector_check  # writes the sample the detector must flag

    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.bin").write_bytes(detector_check.dumps({"x": 1}))
    with zipfile.ZipFile(tmp_path / "c.pt", "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    assert pickles_under(tmp_path) == [
        "b.bin: pickle protocol 4",
        "c.pt: torch.save archive (data.pkl)",
    ]


def test_committed_artefacts_hold_no_pickle():
    folders = [ROOT / "spacy_medllm", ROOT / "corpus", ROOT / "configs"]
    found = [f"{folder.name}/{item}" for folder in folders for item in pickles_under(folder)]
    assert found == []


def test_training_outputs_hold_no_pickle_outside_resume_checkpoints():
    training = ROOT / "training"
    if not any(training.glob("*/*")):
        pytest.skip("no training outputs on this machine")
    found = []
    for path in sorted(training.rglob("*")):
        if not path.is_file() or path.name == ".gitkeep":
            continue
        kind = pickle_kind(path)
        resume = path.name in RESUME_STATE and path.parent.name.startswith("checkpoint-")
        if kind and not resume:
            found.append(f"{path.relative_to(ROOT)}: {kind}")
    assert found == []


# -- the key ---------------------------------------------------------------------------------------


def files_with_the_key(folder: Path) -> list[str]:
    """Files under `folder` holding the key, or a piece of it long enough to matter."""
    pieces = [SECRET.encode(), SECRET[3:20].encode(), SECRET[-20:].encode()]
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and any(piece in path.read_bytes() for piece in pieces)
    )


def run_writing_everything(base_url: str, out: Path, model: str = "served") -> list:
    """A pipeline run with the OpenAI backend that writes all it can: the pipeline, a response
    cache, prompts and answers in the records, the Docs, a summary report, `extract` output."""
    out.mkdir(parents=True)
    nlp = spacy.blank("en")
    nlp.add_pipe(
        "medllm_ner",
        config={
            "labels": ["DRUG", "ADVERSE_EVENT"],
            "save_io": True,
            "cache_dir": str(out / "cache"),
            "generator": {
                "@misc": "medllm.OpenAIGenerator.v1",
                "model": model,
                "base_url": base_url,
                "api_key_env": KEY_ENV,
                "max_new_tokens": 16,
                "max_retries": 1,
                "timeout": 30,
            },
        },
    )
    docs = list(nlp.pipe(TEXTS))
    nlp.to_disk(out / "pipeline")
    DocBin(docs=docs, store_user_data=True).to_disk(out / "docs.spacy")
    summary = summarise_records(get_record(doc) for doc in docs)
    records = [get_record(doc) for doc in docs]
    (out / "report.json").write_text(json.dumps({"summary": summary, "records": records}))
    (out / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    code = main(
        ["extract", "--pipeline", str(out / "pipeline"), "-i", str(out / "texts.jsonl"),
         "-o", str(out / "extracted.jsonl"), "--save-io"]
    )  # fmt: skip
    assert code == 0
    return docs


@pytest.fixture
def debug_log(tmp_path):
    """Everything logged at DEBUG (the package, openai, httpx) goes to a file under tmp_path."""
    handler = logging.FileHandler(tmp_path / "run.log", encoding="utf8")
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("", "spacy_medllm", "openai", "httpx", "httpcore")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    yield tmp_path / "run.log"
    logging.getLogger().removeHandler(handler)
    handler.close()
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def test_a_planted_key_is_in_no_file_a_run_writes(tmp_path, monkeypatch, debug_log):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeOpenAIServer(require_key=SECRET) as good:
        docs = run_writing_everything(good.base_url, tmp_path / "answered")
    assert good.authorizations and set(good.authorizations) == {f"Bearer {SECRET}"}
    assert all(get_record(doc)["error"] is None for doc in docs)
    # A server that refuses the key and echoes it back in its error message.
    with FakeOpenAIServer(require_key="another-key") as echoing:
        docs = run_writing_everything(echoing.base_url, tmp_path / "refused")
    errors = [get_record(doc)["error"] for doc in docs]
    assert all("HTTP 401" in error and KEY_ENV in error for error in errors), errors
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 20 and debug_log.stat().st_size > 0
    assert files_with_the_key(tmp_path) == []
    assert pickles_under(tmp_path) == []
    log_figure(
        "security",
        "planted API key (scripted server)",
        files_written=len(written),
        files_with_key=0,
        pickles=0,
    )


@pytest.mark.slow
def test_a_planted_key_is_in_no_file_a_real_server_run_writes(
    llama_server, tmp_path, monkeypatch, debug_log
):
    monkeypatch.setenv(KEY_ENV, SECRET)
    docs = run_writing_everything(llama_server, tmp_path / "run", model=LLAMA_SERVER_MODEL)
    assert all(get_record(doc)["error"] is None for doc in docs)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files_with_the_key(tmp_path) == []
    assert pickles_under(tmp_path) == []
    log_figure(
        "security",
        "planted API key (llama.cpp server)",
        files_written=len(written),
        files_with_key=0,
        pickles=0,
    )


# -- the network -----------------------------------------------------------------------------------

NO_NETWORK_RUN = r"""
import ipaddress, json, os, socket, sys

attempts = []
_connect, _connect_ex, _getaddrinfo = (
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
)


def _remote(address):
    if not isinstance(address, tuple):
        return False  # a Unix socket
    try:
        return not ipaddress.ip_address(address[0].split("%")[0]).is_loopback
    except ValueError:
        return address[0] not in ("localhost",)


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and _remote(address):
        attempts.append(f"connect {address}")
        raise OSError("network blocked by the test")
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and _remote(address):
        attempts.append(f"connect_ex {address}")
        return 111
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name not in (None, "localhost", "127.0.0.1", "::1") and _remote((str(name), 0)):
        attempts.append(f"getaddrinfo {name}")
        raise socket.gaierror("name lookup blocked by the test")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = (
    connect, connect_ex, getaddrinfo
)
model, adapter, out = sys.argv[1:4]
import spacy
from spacy_medllm import get_record
from spacy_medllm.pipeline.assemble import build_pipeline

texts = ["After starting aspirin I had a headache and nausea.", "No side effects."]
nlp = build_pipeline(
    model=model, adapter=adapter, labels=["DRUG", "ADVERSE_EVENT"], max_new_tokens=8
)
docs = list(nlp.pipe(texts))
nlp.to_disk(out)
again = list(spacy.load(out).pipe(texts))
print(json.dumps({
    "attempts": attempts,
    "texts": [d.text for d in docs + again],
    "errors": [get_record(d)["error"] for d in docs + again],
}))
"""


def test_the_transformers_path_makes_no_network_access(tiny_model_dir, tiny_adapter_dir, tmp_path):
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env["HF_HOME"] = str(tmp_path / "hf_home")  # an empty hub cache: nothing to find there
    script = tmp_path / "no_network_run.py"
    script.write_text(NO_NETWORK_RUN, encoding="utf8")
    out = tmp_path / "pipeline"
    result = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir), str(tiny_adapter_dir), str(out)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    assert report["texts"] == [
        "After starting aspirin I had a headache and nausea.", "No side effects."
    ] * 2  # fmt: skip
    assert report["errors"] == [None] * 4
    assert pickles_under(out) == []
    log_figure("security", "transformers path with the network blocked", attempts=0, pickles=0)
