"""Serving the fine-tuned model: the OpenAI backend's schema-constrained, sized requests, and a
LoRA trained here exported to GGUF with llama.cpp's own converters, served by llama.cpp's own
server, giving the same entities as the in-process pipeline.

The export tests need llama.cpp's tools (`scripts/install_llama_cpp_tools.sh`, part of
`setup.sh --tests`); they skip without them, and fail instead where CI requires the server
(MEDLLM_REQUIRE_LLAMA_SERVER=1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import spacy

from spacy_medllm.core.examples import make_example
from spacy_medllm.generators.base import GenerationError
from spacy_medllm.generators.openai_compat import OpenAIGenerator, answer_schema
from tests.gold_examples import GOLD, LABELS
from tests.servers import FakeOpenAIServer

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")


def _prompt(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Extract."}, {"role": "user", "content": text}]


# -- the OpenAI backend's requests -------------------------------------------------------------


def test_schema_constrained_and_sized_requests() -> None:
    generator = OpenAIGenerator(
        model="m", base_url="http://127.0.0.1:9/v1", constrained="schema", sized_answers=True
    )
    with pytest.raises(GenerationError, match="needs the labels"):
        generator.request_kwargs(_prompt("aspirin"))
    generator.set_labels(LABELS)
    short = generator.request_kwargs(_prompt("aspirin"))
    assert short["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "entities", "schema": answer_schema(LABELS)},
    }
    assert short["response_format"]["json_schema"]["schema"]["items"]["properties"]["label"] == {
        "type": "string",
        "enum": LABELS,
    }
    long = generator.request_kwargs(_prompt("aspirin and a headache " * 40))
    assert short["max_tokens"] < 40 and long["max_tokens"] == generator.max_new_tokens == 256
    assert generator.describe()["constrained"] == "schema"
    assert generator.describe()["labels"] == LABELS

    with pytest.raises(ValueError, match="constrained must be one of off, schema"):
        OpenAIGenerator(model="m", constrained="grounded")
    with pytest.raises(ValueError, match="both set response_format"):
        OpenAIGenerator(model="m", constrained="schema", response_format_json=True)
    # Settings that change the answers are not part of the old cache key when off.
    assert "constrained" not in OpenAIGenerator(model="m").describe()


def test_schema_settings_survive_the_pipeline_round_trip(tmp_path: Path) -> None:
    """assemble --base-url: the served model's prompt settings come from the export folder and
    the schema and sized answers are saved with the pipeline; what goes over the wire has them."""
    from spacy_medllm.pipeline.assemble import build_pipeline

    settings = tmp_path / "export"
    settings.mkdir()
    (settings / "prompt_template.json").write_text(
        json.dumps(
            {
                "labels": ["DRUG"],
                "label_definitions": {"DRUG": "a medicine"},
                "template": {"instruction": "Find drugs.\n{label_lines}", "examples": []},
            }
        ),
        "utf8",
    )
    with FakeOpenAIServer() as fake:
        nlp = build_pipeline(
            model="served",
            adapter=str(settings),
            base_url=fake.base_url,
            constrained="schema",
        )
        nlp.to_disk(tmp_path / "pipeline")
        loaded = spacy.load(tmp_path / "pipeline")
        generator = loaded.get_pipe("medllm_ner").generator
        assert (generator.constrained, generator.labels, generator.sized_answers) == (
            "schema",
            ["DRUG"],
            True,
        )
        loaded("She took aspirin.")
        body = fake.requests[-1]
    assert body["response_format"]["json_schema"]["schema"]["items"]["properties"]["label"][
        "enum"
    ] == ["DRUG"]
    assert body["messages"][0]["content"].startswith("Find drugs.")
    assert body["max_tokens"] < 64
    with pytest.raises(ValueError, match="needs the transformers backend"):
        build_pipeline(model="m", base_url=fake.base_url, constrained="grounded")
    with pytest.raises(FileNotFoundError, match="prompt settings"):
        build_pipeline(model="m", adapter=str(tmp_path), base_url=fake.base_url)


# -- export and serve a LoRA trained here --------------------------------------------------------


def _tools_or_skip() -> None:
    from spacy_medllm.serving.tools import missing_tools

    reason = missing_tools()
    if reason is None:
        return
    if os.environ.get("MEDLLM_REQUIRE_LLAMA_SERVER"):
        pytest.fail(f"llama.cpp's tools are required here: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def trained_smol(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny Llama with SmolLM2's tokenizer and chat template (llama.cpp's converter knows that
    tokenizer) and a LoRA that has memorised the GOLD answers."""
    _tools_or_skip()
    pytest.importorskip("peft")
    from spacy_medllm.generators.packaged import ModelNotAvailableError, resolve_base_model
    from spacy_medllm.training.trainer import finetune

    from .tiny_models import build_tiny_causal_lm_with_tokenizer, overfit_config

    try:
        smol = resolve_base_model("smollm2-135m-instruct")
    except ModelNotAvailableError as error:
        pytest.skip(str(error))
    root = tmp_path_factory.mktemp("serving")
    base = build_tiny_causal_lm_with_tokenizer(root / "base", smol)
    examples = [
        make_example(text, [(text.index(s), text.index(s) + len(s), lab) for s, lab in pairs])
        for text, pairs in GOLD
    ]
    config = overfit_config(base, root / "run", LABELS, max_steps=120, batch_size=6)
    return {"base": base, "run": root / "run", "adapter": finetune(config, examples)}


@pytest.fixture(scope="module")
def exported(trained_smol: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from typer.testing import CliRunner

    from spacy_medllm.cli import app

    output = tmp_path_factory.mktemp("export")
    result = CliRunner().invoke(
        app,
        ["export-gguf", str(trained_smol["run"]), "--output", str(output), "--types",
         "f16,q8_0", "--base"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return output


def test_export_writes_gguf_files_and_the_prompt_settings(exported: Path, trained_smol) -> None:
    import gguf

    from spacy_medllm.core.adapter_settings import load_prompt_settings
    from spacy_medllm.serving.gguf_export import load_manifest

    manifest = load_manifest(exported)
    assert set(manifest["files"]) == {"lora-f16", "base-f16", "merged-f16", "merged-q8_0"}
    assert manifest["labels"] == LABELS
    assert load_prompt_settings(exported)["labels"] == LABELS
    for entry in manifest["files"].values():
        path = exported / entry["file"]
        assert path.stat().st_size == entry["bytes"] > 0
        reader = gguf.GGUFReader(path)
        kind = reader.get_field("general.type")
        assert bytes(kind.parts[-1]).decode() == ("adapter" if entry["kind"] == "lora" else "model")
    merged = gguf.GGUFReader(exported / "merged-f16.gguf")
    template = merged.get_field("tokenizer.chat_template")
    assert "<|im_start|>" in bytes(template.parts[-1]).decode()
    # q8_0 is smaller than f16; no pickle anywhere.
    sizes = {k: v["bytes"] for k, v in manifest["files"].items()}
    assert sizes["merged-q8_0"] < sizes["merged-f16"]
    assert not [p for p in exported.rglob("*") if p.suffix in (".bin", ".pt", ".pkl")]


def _served_entities(base_url: str, exported: Path, texts: list[str]) -> list[list[tuple]]:
    from spacy_medllm.pipeline.assemble import build_pipeline

    nlp = build_pipeline(
        model="medllm", adapter=str(exported), base_url=base_url, constrained="schema"
    )
    return [[(e.text, e.label_) for e in doc.ents] for doc in nlp.pipe(texts)]


@pytest.mark.slow
def test_served_model_gives_the_in_process_entities(exported: Path, trained_smol, tmp_path) -> None:
    """The merged f16 model and the LoRA on the base model, each served by llama-server, find the
    entities the in-process pipeline finds (the answers it memorised), with the same prompt."""
    from spacy_medllm.pipeline.assemble import build_pipeline
    from spacy_medllm.serving.llama_server import LlamaServer, settings_for_export

    texts = [text for text, _ in GOLD]
    local = build_pipeline(
        model=str(trained_smol["base"]), adapter=str(trained_smol["adapter"]), constrained="schema"
    )
    expected = [[(e.text, e.label_) for e in doc.ents] for doc in local.pipe(texts)]
    # The LoRA has learnt the answers (most of them: a few steps of a tiny model), so the
    # comparison below is between real lists of entities, not empty ones.
    gold = {(i, pair) for i, (_, pairs) in enumerate(GOLD) for pair in pairs}
    found = {(i, pair) for i, pairs in enumerate(expected) for pair in pairs}
    assert len(found & gold) >= 0.8 * len(gold), (expected, GOLD)
    for kind in ("merged-f16", "lora-f16"):
        settings = settings_for_export(
            exported, kind, parallel=4, ctx_per_slot=1024, log_path=tmp_path / f"{kind}.log"
        )
        with LlamaServer.start(settings) as server:
            assert server.health().get("status") == "ok"
            served = _served_entities(server.base_url, exported, texts)
        # f16 weights and llama.cpp's kernels against float32 torch: a barely-learnt answer
        # may flip, so the two agree on nearly every entity rather than on all of them.
        served_pairs = {(i, pair) for i, pairs in enumerate(served) for pair in pairs}
        agreement = len(served_pairs & found) / max(1, len(served_pairs | found))
        assert agreement >= 0.85, (kind, served, expected)
        assert server.process.poll() is not None  # stopped


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_serve_command_passes_server_arguments_and_stops_on_sigterm(
    exported: Path, tmp_path: Path
) -> None:
    """`serve` starts llama-server with the --server-arg values as given (here --n-predict 2, the
    answer limit of requests that set none), prints where it serves, and on SIGTERM stops its
    server before it exits."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.servers import free_port

    port, log = free_port(), tmp_path / "server.log"
    command = [sys.executable, "-m", "spacy_medllm", "serve", str(exported), "--port", str(port),
               "--parallel", "1", "--ctx-per-slot", "512", "--log", str(log),
               "--server-arg=--n-predict", "--server-arg=2"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = process.stdout.readline()
        assert first.startswith("Serving "), first + (log.read_text() if log.exists() else "")
        servers = _children(process.pid)
        assert len(servers) == 1
        # ignore_eos (llama.cpp's own field): the answer can only end at a token limit.
        body = json.dumps(
            {"model": "medllm", "messages": _prompt(GOLD[0][0]), "ignore_eos": True}
        )  # fmt: skip
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        # No limit in the request: the server's default, --n-predict 2, stops the answer at two
        # tokens (without it, the answer would run on to the end of the slot's context).
        assert answer["usage"]["completion_tokens"] == 2, answer
        assert answer["choices"][0]["finish_reason"] == "length", answer
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while Path(f"/proc/{servers[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{servers[0]}").exists(), "llama-server outlived serve"
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()


def test_export_refuses_what_it_cannot_export(tmp_path: Path) -> None:
    from spacy_medllm.serving.gguf_export import export_gguf, find_adapter

    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_adapter(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no LoRA adapter"):
        find_adapter(tmp_path)
    with pytest.raises(ValueError, match="unknown GGUF types"):
        export_gguf(tmp_path, tmp_path / "out", types=["q2"])
