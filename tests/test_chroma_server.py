"""Chroma as a server: ``bmrag serve-index DIR --port P`` (``chroma run``, started for real on 127.0.0.1) and
``--index http://HOST:PORT``. The QA chain answers questions while a separate ``bmrag index`` process adds
documents through the same server: no error, no corruption, the new documents visible to the next question.

Marked ``scale`` (a Chroma server and two processes): run by ``scripts/ci_scale.sh`` after ``make test``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bmrag import serve
from bmrag.index import chroma_client

pytestmark = pytest.mark.scale

MODEL = "all-MiniLM-L6-v2"
QUESTION = "What are the treatments for glaucoma?"
NEW_QUESTION = "What does hydroxyurea do in sickle cell anaemia?"


def _docs() -> tuple[list[dict], list[dict]]:
    """200 documents of the bundled corpus in the demo's indexing order (the first 40 hold its glaucoma pages),
    split 40 / 160, and one new document no other one resembles, added last by the concurrent writer.

    Real documents, not generated near-copies: 200 near-identical synthetic reports ("Report i about X ...")
    made Chroma's HNSW search (ef_search 100) miss the one distinct document in 10 of 10 builds, served or
    embedded, concurrent or not (``evals/bench_hnsw.py``): a recall limit of the index on that data, which this
    test is not about.
    """
    from bmrag.index.readers import load_corpus
    from bmrag.index.sample import DEMO_CORPUS, priority_order

    corpus = load_corpus(DEMO_CORPUS)
    docs = [{"_id": doc_id, **corpus[doc_id]} for doc_id in priority_order(corpus)[:200]]
    new = {"_id": "zz-new", "title": "Hydroxyurea in sickle cell anaemia",
           "text": "Hydroxyurea raises fetal haemoglobin and reduces painful crises in sickle cell anaemia.",
           "metadata": {"year": 2021}}
    return docs[:40], docs[40:] + [new]


@pytest.fixture()
def server(tmp_path):
    """``bmrag serve-index`` as users run it; yields the URL, then SIGTERMs the CLI (which stops Chroma)."""
    port = serve.free_port()
    log = (tmp_path / "serve-index.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "bmrag.cli", "serve-index", str(tmp_path / "db"), "--port",
                                str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.perf_counter()
        while "Chroma is serving" not in (tmp_path / "serve-index.log").read_text():
            assert process.poll() is None and time.perf_counter() - start < 120, \
                (tmp_path / "serve-index.log").read_text()
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0
        log.close()
    with pytest.raises(ConnectionError, match=f"no Chroma server answered at {url}"):
        chroma_client.open_client(url)


def test_index_location_keeps_urls_and_expands_paths():
    assert chroma_client.index_location("http://127.0.0.1:8100/") == "http://127.0.0.1:8100"
    assert chroma_client.index_location(Path("http://localhost:9000")) == "http://localhost:9000"  # Path() made http:/
    assert chroma_client.index_location("~/idx") == Path.home() / "idx"
    with pytest.raises(ValueError, match="without a path"):
        chroma_client.index_location("http://127.0.0.1:8100/api")


def test_chain_answers_while_bmrag_index_adds_documents_through_the_server(server, tmp_path, capsys):
    from bmrag.cli import main
    from bmrag.index.build import corpus_to_nodes
    from bmrag.index.manifest import encoder_of
    from bmrag.qa.chain import QAChain

    first, second = _docs()
    for name, docs in (("first.jsonl", first), ("second.jsonl", second)):
        (tmp_path / name).write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert main(["index", "--corpus", str(tmp_path / "first.jsonl"), "--index", server, "--model", MODEL,
                 "--no-progress"]) == 0
    assert "Indexed 40 documents" in capsys.readouterr().out

    chain = QAChain.from_index(server, backend="local", max_new_tokens=4, threads=1)
    results, errors = [], []
    writer = subprocess.Popen([sys.executable, "-m", "bmrag.cli", "index", "--corpus", str(tmp_path / "second.jsonl"),
                               "--index", server, "--model", MODEL, "--batch-size", "8", "--no-progress"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def ask_until_done() -> None:
        while True:
            done = writer.poll() is not None
            try:
                result = chain.ask(QUESTION)
                results.append((chain.store.count(), result))
            except Exception as err:  # noqa: BLE001 (any error is the failure this test looks for)
                errors.append(err)
            if done:
                return

    try:
        asker = threading.Thread(target=ask_until_done)
        asker.start()
        asker.join(timeout=600)
        out = writer.communicate(timeout=60)[0]
        assert writer.returncode == 0, out
        assert "Indexed 161 documents" in out
        assert not errors, errors
        assert len(results) >= 2
        # Long pages are split into several passages: the ids the same documents chunk into with this model.
        everything = {d["_id"]: d for d in first + second}
        expected = sorted(n.node_id for n in corpus_to_nodes(everything, encoder_of(chain.embed_model)))
        counts = [count for count, _ in results]
        assert counts == sorted(counts) and counts[0] >= 40 and counts[-1] == len(expected) > 201
        for _, result in results:
            assert result.status == "answered" and result.answer, result.status
            assert result.evidence and "glaucoma" in result.evidence[0].title.lower()
        # The next question sees the writer's last document (Chroma's server applies a write before answering).
        after = chain.ask(NEW_QUESTION)
        assert after.evidence[0].doc_id == "zz-new", [e.doc_id for e in after.evidence]
        # Hybrid too: the chain's BM25 index is rebuilt when the collection's count has changed.
        hybrid = chain.ask(NEW_QUESTION, hybrid=True)
        assert hybrid.evidence[0].doc_id == "zz-new" and hybrid.evidence[0].bm25_rank == 1
    finally:
        chain.close()
        if writer.poll() is None:
            writer.kill()

    # No corruption: every id once, documents intact, searchable from another process through the server.
    client = chroma_client.open_client(server)
    got = client.get_collection("bmrag").get(include=["documents"])
    assert sorted(got["ids"]) == expected
    assert all(doc for doc in got["documents"])
    search = subprocess.run([sys.executable, "-m", "bmrag.cli", "search", "hydroxyurea sickle cell", "--index",
                             server, "-k", "1"], capture_output=True, text=True, timeout=300)
    assert search.returncode == 0, search.stderr
    assert "[zz-new#0]" in search.stdout
