"""The shared vocabularies of bmrag.loading and bmrag.prompts: cache and data roots, dtypes, the instruction rule,
portable result paths, shared CLI options, and validation of evaluation data before any encoding."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest
import torch
from test_evaluation import write_beir

from bmrag import loading, options, prompts
from bmrag.cli import build_parser
from bmrag.encoder import BMRetrieverEncoder
from bmrag.evaluation.report import portable
from bmrag.evaluation.run import evaluate_retrieval
from bmrag.index.readers import DataError


# ------------------------------------------------------------------------------------------- locations
def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("BMRAG_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert loading.cache_dir("index", "demo") == tmp_path / "xdg" / "bmrag" / "index" / "demo"
    monkeypatch.setenv("BMRAG_CACHE", str(tmp_path / "own"))
    assert loading.cache_dir("embeddings") == tmp_path / "own" / "embeddings"
    # Every cache user goes through it.
    from bmrag.evaluation.cache import default_cache_dir
    from bmrag.evaluation.rag import default_index_dir as rag_index_dir
    from bmrag.index.open import default_index_dir

    assert default_index_dir() == tmp_path / "own" / "index" / "demo"
    assert default_cache_dir() == tmp_path / "own" / "embeddings"
    assert rag_index_dir("pubmedqa", "all-MiniLM-L6-v2", "abcdef123456789").parent == tmp_path / "own" / "rag-eval"


def test_data_root_is_the_variable_else_the_folder_beside_the_repository(monkeypatch, tmp_path):
    monkeypatch.setenv("BMRAG_DATA", str(tmp_path))
    assert loading.data_root() == tmp_path
    monkeypatch.delenv("BMRAG_DATA")
    monkeypatch.setattr(loading, "REPOSITORY_DATA", tmp_path / "shared" / "data")
    assert loading.data_root() is None
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert loading.data_root() == tmp_path / "shared" / "data"


def test_no_machine_path_in_the_repository():
    repo = Path(__file__).resolve().parents[1]
    home = str(Path.home())
    suffixes = {".py", ".md", ".json", ".toml", ".sh", ".yaml"}
    checked = [p for p in repo.rglob("*") if p.is_file() and p.suffix in suffixes
               and not any(part in {".venv", ".git", "node_modules"} for part in p.relative_to(repo).parts)]
    offenders = [str(p.relative_to(repo)) for p in checked
                 if str(repo) in (text := p.read_text(encoding="utf-8", errors="replace"))
                 or f"{home}/" in text and home != "/"]
    assert offenders == []


def test_portable_makes_this_machines_paths_relative(monkeypatch, tmp_path):
    work = tmp_path / "checkouts" / "repo"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    shared = tmp_path / "checkouts" / "shared" / "data"
    record = {"path": str(shared / "scifact"), "python": f"{work}/.venv/bin/python",
              "index": f"{Path.home()}/.cache/bmrag/index/demo", "nested": [f"--data={shared}"]}
    out = portable(record)
    assert out == {"path": "../shared/data/scifact", "python": ".venv/bin/python",
                   "index": "~/.cache/bmrag/index/demo", "nested": ["--data=../shared/data"]}
    assert record["python"].startswith(str(work))  # the input is not mutated


# ---------------------------------------------------------------------------------------------- dtypes
def test_one_dtype_vocabulary():
    assert loading.DTYPE_NAMES == ("float32", "bfloat16", "float16")
    for name in loading.DTYPE_NAMES:
        assert loading.dtype_name(loading.resolve_dtype(name, "cpu")) == name
    assert loading.resolve_dtype(None, "cpu") == getattr(torch, loading.default_dtype("cpu"))
    with pytest.raises(ValueError, match=r"dtype must be one of .* got 'fp8'"):
        loading.resolve_dtype("fp8", "cpu")
    with pytest.raises(ValueError, match=r"dtype must be one of .*torch.int8"):
        loading.dtype_name(torch.int8)
    # The CLI offers exactly these names wherever it takes --dtype.
    parser = build_parser()
    for argv in (["ask", "q"], ["index"], ["demo"], ["eval", "rag", "--dataset", "pubmedqa"]):
        assert parser.parse_args([*argv, "--dtype", "float32"]).dtype == "float32"
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--dtype", "fp16"])


# ------------------------------------------------------------------------------------ instruction rule
def test_one_instruction_rule_and_its_precedence():
    scifact = prompts.get_instruction("scifact")
    nfcorpus = prompts.get_instruction("nfcorpus")
    choose = prompts.choose_instruction
    assert choose("Find it", dataset_task="scifact", model_default="saved").text == "Find it"
    assert choose(task="nfcorpus", dataset_task="scifact", model_default="saved").text == nfcorpus
    assert choose(dataset_task="scifact", model_default="saved", fallback_task="nfcorpus").text == scifact
    assert choose(model_default="saved", fallback_task="nfcorpus").origin == "the model's recorded default"
    assert choose(fallback_task="nfcorpus").text == nfcorpus
    assert choose() == prompts.InstructionChoice(None, None, "none given")
    assert choose(scifact, "scifact").task == "scifact"  # a saved config carries both when they agree
    with pytest.raises(ValueError, match="pass either instruction= or task=, not both"):
        choose("Find it", "scifact")


def test_encoder_embedding_and_eval_pick_the_same_instruction(tiny_llama_dir):
    from bmrag.llama_index.embedding import resolve_query_instruction

    encoder = BMRetrieverEncoder.from_pretrained(tiny_llama_dir, dtype="float32", device="cpu")
    for instruction, task in (("Find it", None), (None, "trec-covid")):
        expected = prompts.choose_instruction(instruction, task).text
        assert encoder.format_query("q", instruction=instruction, task=task).startswith(expected + "\n")
        assert resolve_query_instruction(encoder, instruction, task, "test")[0] == expected


# --------------------------------------------------------------------------------- eval data validation
def test_an_empty_query_is_reported_before_any_encoding(tmp_path, monkeypatch):
    folder = write_beir(tmp_path / "custom", queries={"q1": "Does aspirin help?", "q2": "   "},
                        qrels={"q1": {"d1": 1}, "q2": {"d2": 1}})

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(BMRetrieverEncoder, "from_pretrained", fail)
    with pytest.raises(DataError, match=r"queries.jsonl:2: query 'q2' has an empty 'text'"):
        evaluate_retrieval("all-MiniLM-L6-v2", data=folder, use_cache=False, show_progress_bar=False)


def test_a_custom_folder_says_which_instruction_it_used(tiny_llama_dir, tmp_path, caplog):
    folder = write_beir(tmp_path / "mine")
    encoder = BMRetrieverEncoder.from_pretrained(tiny_llama_dir, dtype="float32", device="cpu")
    with caplog.at_level(logging.WARNING, logger="bmrag.evaluation.run"):
        result = evaluate_retrieval(encoder, data=folder, task="scifact", use_cache=False, show_progress_bar=False)
    assert "mine is not a registered dataset: queries use task 'scifact'" in caplog.text
    assert result["recipe"]["instruction_origin"] == "task 'scifact'"
    assert json.loads(json.dumps(result))["recipe"]["instruction"] == prompts.get_instruction("scifact")


# ------------------------------------------------------------------------------------- shared options
def test_generator_options_are_declared_once_and_checked_alike():
    parsers = {name: argparse.ArgumentParser() for name in ("ask", "app")}
    options.add_generator_options(parsers["ask"], health_timeout=True)
    options.add_app_arguments(parsers["app"], smoke_question="Q?")
    for parser in parsers.values():
        args = parser.parse_args(["--backend", "vllm", "--threads", "2"])
        with pytest.raises(ValueError, match="--threads applies to --backend local only"):
            options.check_generator_args(args.backend, args)
        args = parser.parse_args(["--api-base", "http://127.0.0.1:1/v1"])
        with pytest.raises(ValueError, match="--api-base applies to --backend vllm only"):
            options.check_generator_args(args.backend, args)
