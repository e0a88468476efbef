"""``bmrag index --engine ray``: a real local Ray cluster (2 encoding actors) builds the index the single-process
path builds (same ids, documents, metadata, manifest; vectors within float tolerance), re-runs add nothing, and a
worker killed mid-run (SIGKILL of the actor process) is restarted by Ray with nothing lost or duplicated.

Marked ``scale``: starting Ray takes ~10-20 s here, so these run in ``scripts/ci_scale.sh`` (after ``make test``),
not in the default test run.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from index_dump import assert_same_index, dump_index

pytest.importorskip("ray", reason="pip install 'bmrag[scale]'")

pytestmark = pytest.mark.scale

WORDS = ("aspirin metformin insulin glucose platelet thrombosis statin cholesterol asthma steroid vitamin collagen "
         "scurvy dementia hypertension kidney liver cancer tumour antibody").split()


def _text(i: int, words: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words)) + "."


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    rows = []
    for i in range(40):
        long = i == 5  # one document longer than the model's budget: split into several chunks
        rows.append({"_id": f"d{i:02d}", "title": f"Title {i}", "text": _text(i, 900 if long else 12 + i % 9),
                     "metadata": {"year": 2000 + i, "pmid": str(10_000 + i)}})
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def embed_model(tiny_llama_dir):
    from bmrag.llama_index.embedding import BMRetrieverEmbedding

    return BMRetrieverEmbedding(model_name=str(tiny_llama_dir), dtype="float32", embed_batch_size=8)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    # What build_with_ray would start itself; started here once so the tests share it (2 actors + a reader).
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def reference_index(tmp_path_factory, corpus_file, embed_model) -> dict:
    from bmrag.index.build import build_index
    from bmrag.index.sources import read_documents

    index = tmp_path_factory.mktemp("single") / "index"
    documents, _ = read_documents(str(corpus_file))
    store, report = build_index(documents, index, embed_model, show_progress=False)
    store.close()
    assert report.added > report.documents_added == 40  # the long document was chunked
    return dump_index(index)


def test_ray_two_workers_build_the_single_process_index_and_a_rerun_adds_nothing(
        tmp_path, corpus_file, embed_model, reference_index, ray_cluster):
    from bmrag.index.ray_engine import build_with_ray

    index = tmp_path / "index"
    report = build_with_ray(corpus_file, index, embed_model, workers=2, batch_size=8, lines_per_shard=7,
                            show_progress=False)
    assert report.shards == 6 and report.documents_added == 40 and not report.duplicates
    assert_same_index(dump_index(index), reference_index)
    again = build_with_ray(corpus_file, index, embed_model, workers=2, batch_size=8, lines_per_shard=7,
                           show_progress=False)
    assert again.nodes_added == 0 and again.skipped_stored == report.nodes_added


def test_resume_after_a_partial_index_adds_only_the_missing_nodes(
        tmp_path, corpus_file, embed_model, reference_index, ray_cluster):
    from bmrag.index.build import build_index
    from bmrag.index.ray_engine import build_with_ray
    from bmrag.index.sources import read_documents

    index = tmp_path / "index"
    documents, _ = read_documents(str(corpus_file))
    first = dict(list(documents.items())[:13])  # as if a run had stopped after 13 documents
    store, _ = build_index(first, index, embed_model, show_progress=False)
    store.close()
    report = build_with_ray(corpus_file, index, embed_model, workers=2, batch_size=8, lines_per_shard=7,
                            show_progress=False)
    assert report.documents_added == 27
    assert_same_index(dump_index(index), reference_index)


class _DiesOnce:
    """Mixin: the first actor to reach its 2nd batch SIGKILLs its own process (a crashed / preempted worker)."""

    marker: str = ""

    def __call__(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


def test_a_worker_killed_mid_run_is_retried_and_the_index_still_matches(
        tmp_path, corpus_file, embed_model, reference_index, ray_cluster):
    import cloudpickle

    from bmrag.index.ray_engine import EncodeBatch, build_with_ray

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this test module
    marker = tmp_path / "killed.pid"
    killing = type("KillingEncodeBatch", (_DiesOnce, EncodeBatch), {"marker": str(marker)})
    index = tmp_path / "index"
    report = build_with_ray(corpus_file, index, embed_model, workers=2, batch_size=8, lines_per_shard=7,
                            show_progress=False, encode_class=killing)
    assert marker.is_file(), "no worker was killed: the test did not test anything"
    assert int(marker.read_text()) != os.getpid()
    assert report.documents_added == 40
    assert_same_index(dump_index(index), reference_index)


def test_text_folder_source_is_read_in_shards_with_the_same_ids(tmp_path, embed_model, ray_cluster):
    from bmrag.index import ray_engine
    from bmrag.index.build import build_index
    from bmrag.index.sources import read_documents

    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        (folder / ("sub" if i % 2 else "") / f"n{i}.md").write_text(f"# Note {i}\n\n{_text(i, 15)}\n")
    (folder / "empty.txt").write_text("  \n")
    shards = ray_engine.plan_shards(folder, files_per_shard=2)
    assert [len(s.files) for s in shards] == [2, 2, 2]
    single = tmp_path / "single"
    documents, _ = read_documents(str(folder))
    build_index(documents, single, embed_model, show_progress=False)[0].close()
    ray_index = tmp_path / "ray"
    report = ray_engine.build_with_ray(folder, ray_index, embed_model, workers=2, batch_size=4, show_progress=False)
    assert report.documents_added == 5
    assert_same_index(dump_index(ray_index), dump_index(single))


def test_a_malformed_line_is_named_and_what_was_stored_stays(tmp_path, corpus_file, embed_model, ray_cluster):
    from bmrag.index.ray_engine import build_with_ray
    from bmrag.index.readers import DataError

    bad = tmp_path / "corpus.jsonl"
    lines = corpus_file.read_text().splitlines()
    lines[30] = '{"_id": "broken", "text": '
    bad.write_text("\n".join(lines) + "\n")
    index = tmp_path / "index"
    with pytest.raises(DataError, match=r"corpus\.jsonl:31: malformed record"):
        build_with_ray(bad, index, embed_model, workers=2, batch_size=8, lines_per_shard=7, show_progress=False)
    report = build_with_ray(bad, index, embed_model, workers=2, batch_size=8, lines_per_shard=7,
                            show_progress=False, skip_bad=True)
    assert len(report.bad_records) == 1 and f"{bad}:31: malformed record" in report.bad_records[0]
    stored = dump_index(index)
    assert "broken#0" not in stored and "d30#0" not in stored and len(stored) - 1 == report.nodes_added + \
        report.skipped_stored


def test_bmrag_index_engine_ray_command(tmp_path, corpus_file, tiny_llama_dir, ray_cluster, capsys):
    from bmrag.cli import main

    index = tmp_path / "index"
    argv = ["index", "--engine", "ray", "--workers", "2", "--corpus", str(corpus_file), "--index", str(index),
            "--model", str(tiny_llama_dir), "--batch-size", "8", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Indexed 40 documents" in out and "with 2 Ray workers" in out
    assert main(argv) == 0
    assert "Index up to date" in capsys.readouterr().out
    assert main(["index", "--workers", "2", "--corpus", str(corpus_file), "--index", str(index)]) == 2
    assert "--address/--workers apply to --engine ray only" in capsys.readouterr().err
