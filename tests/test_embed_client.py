"""``bmrag.embed_client``: the client side of ``bmrag serve-embed`` (fast tests; real vLLM: test_vllm_embed.py).

The protocol tests talk to a stand-in for vLLM's ``/v1/embeddings``, a real HTTP server on 127.0.0.1 that runs
the tiny in-process model on the *token ids it receives* with last-token pooling and no normalisation (what
vLLM's pooling runner does). It exists because a real vLLM server takes minutes to start here; the equivalence
with real vLLM is asserted in ``test_vllm_embed.py`` (``scripts/ci_vllm.sh``). What the stand-in lets these tests
check: the client sends the recipe's token ids (template, 511 + EOS), keeps input order across concurrent
batched requests, normalises only when the recipe says so, and fails clearly when the server is down or serves
another model.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from bmrag import serve
from bmrag.embed_client import EmbeddingServerError, embedding_model_dir
from bmrag.encoder import BMRetrieverEncoder


class _PoolingStandIn(BaseHTTPRequestHandler):
    encoder: BMRetrieverEncoder
    name: str
    received: list[list[int]]

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path == "/v1/models":
            self._send(200, {"data": [{"id": self.name}]})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["model"] != self.name:
            self._send(404, {"error": {"message": f"The model `{body['model']}` does not exist."}})
            return
        rows = body["input"]
        self.received.extend(rows)
        with torch.inference_mode():
            vectors = self.encoder.forward(self.encoder.collate(rows))  # last-token pooled, unnormalised
        self._send(200, {"data": [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]})


@pytest.fixture()
def stand_in(tiny_llama_dir):
    encoder = BMRetrieverEncoder.from_pretrained(str(tiny_llama_dir), dtype="float32", normalize=False)
    handler = type("Handler", (_PoolingStandIn,), {"encoder": encoder, "name": tiny_llama_dir.name, "received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    server.shutdown()


def test_client_sends_recipe_token_ids_and_keeps_order_across_concurrent_batches(stand_in, tiny_llama_dir):
    api_base, handler = stand_in
    local = BMRetrieverEncoder.from_pretrained(str(tiny_llama_dir), dtype="float32")
    remote = BMRetrieverEncoder.from_server(api_base, str(tiny_llama_dir), dtype="float32", concurrency=3)
    docs = [{"title": f"T{i}", "text": "aspirin platelet " * (1 + 7 * i)} for i in range(10)]
    docs.append({"title": "long", "text": "glucose insulin " * 700})  # truncated to 511 tokens + EOS
    got = remote.encode_documents(docs, batch_size=3)
    np.testing.assert_allclose(got, local.encode_documents(docs), rtol=1e-4, atol=1e-5)
    sent = sorted(handler.received, key=len)
    assert sent == sorted(local.tokenize(local._format_documents(docs)), key=len)
    assert max(map(len, sent)) == 512 and all(row[-1] == local.tokenizer.eos_token_id for row in sent)
    queries = remote.encode_queries(["Does aspirin help?"], task="scifact")
    np.testing.assert_allclose(queries, local.encode_queries(["Does aspirin help?"], task="scifact"), rtol=1e-4,
                               atol=1e-5)
    assert remote.describe()["model"] == local.describe()["model"]  # so an index built either way is reusable


def test_cosine_recipe_is_normalised_by_the_client(stand_in, tiny_llama_dir):
    api_base, _ = stand_in
    (tiny_llama_dir / "bmrag_config.json").write_text(json.dumps({"recipe": {"normalize": True}}))
    try:
        remote = BMRetrieverEncoder.from_server(api_base, str(tiny_llama_dir), dtype="float32")
        vectors = remote.encode_documents(["a passage about statins", "another about warfarin"])
    finally:
        (tiny_llama_dir / "bmrag_config.json").unlink()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_llama_index_embedding_with_api_base(stand_in, tiny_llama_dir):
    from bmrag.llama_index.embedding import BMRetrieverEmbedding

    api_base, _ = stand_in
    emb = BMRetrieverEmbedding(model_name=str(tiny_llama_dir), api_base=api_base, dtype="float32", task="scifact")
    local = BMRetrieverEmbedding(model_name=str(tiny_llama_dir), dtype="float32", task="scifact")
    np.testing.assert_allclose(emb.get_text_embedding_batch(["x y z", "aspirin"]),
                               local.get_text_embedding_batch(["x y z", "aspirin"]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"takes model_name= \(and dtype=\) only"):
        BMRetrieverEmbedding(model_name=str(tiny_llama_dir), api_base=api_base, device="cpu")


def test_server_serving_another_model_is_named(stand_in, tiny_llama_dir):
    api_base, _ = stand_in
    with pytest.raises(EmbeddingServerError, match=f"does not serve 'other-model'; it serves: {tiny_llama_dir.name}"):
        BMRetrieverEncoder.from_server(api_base, str(tiny_llama_dir), served_name="other-model")


def test_server_down_is_a_clear_error():
    api_base = f"http://127.0.0.1:{serve.free_port()}/v1"
    with pytest.raises(EmbeddingServerError, match=rf"no embedding server answered at {api_base} .*bmrag serve-embed"):
        BMRetrieverEncoder.from_server(api_base, "SmolLM2-135M-Instruct")


def test_from_server_rejects_unknown_options_and_non_http_urls():
    with pytest.raises(TypeError, match=r"'batch'; valid: check, concurrency, dtype, served_name, timeout"):
        BMRetrieverEncoder.from_server("http://127.0.0.1:1/v1", "bmrag-mini", batch=3)
    with pytest.raises(ValueError, match="must be an http"):
        BMRetrieverEncoder.from_server("127.0.0.1:8000", "bmrag-mini")


def test_sentence_transformers_models_are_refused_by_serve_embed():
    with pytest.raises(ValueError, match="sentence-transformers model .*serves last-token"):
        embedding_model_dir("all-MiniLM-L6-v2")


def test_embed_server_command_uses_vllm_032_pooling_flags(tmp_path, tiny_llama_dir):
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("")
    spec = serve.embed_server_spec(str(tiny_llama_dir), port=8123, device="cpu", python=python, dtype="bfloat16")
    command = spec.command
    assert command[command.index("--runner") + 1] == "pooling" and command[command.index("--convert") + 1] == "embed"
    assert json.loads(command[command.index("--pooler-config") + 1]) == {"pooling_type": "LAST",
                                                                         "use_activation": False}
    assert command.count("--dtype") == 1 and command[command.index("--dtype") + 1] == "bfloat16"
    assert command[command.index("--max-model-len") + 1] == "512"


def test_bmrag_index_with_embed_api_base_builds_the_in_process_index(stand_in, tiny_llama_dir, tmp_path, capsys):
    from index_dump import assert_same_index, dump_index

    from bmrag.cli import main

    api_base, handler = stand_in
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": "statin warfarin " * (2 + i)})
                              + "\n" for i in range(6)))
    common = ["index", "--corpus", str(corpus), "--model", str(tiny_llama_dir), "--dtype", "float32",
              "--batch-size", "4", "--no-progress"]
    assert main([*common, "--index", str(tmp_path / "local")]) == 0
    assert main([*common, "--index", str(tmp_path / "served"), "--embed-api-base", api_base]) == 0
    out = capsys.readouterr().out
    assert f"encoding on {api_base}" in out and len(handler.received) == 6

    local, served = dump_index(tmp_path / "local"), dump_index(tmp_path / "served")
    # Same manifest (model, recipe, dtype, dim), except that it records how the vectors were made; same passages.
    kinds = (local["__manifest__"].pop("bmrag_kind"), served["__manifest__"].pop("bmrag_kind"))
    assert kinds == ("hf", "vllm-server")
    assert_same_index(served, local)

    # Questions embedded on the server find what in-process questions find (QAChain, bmrag search), scores too.
    from bmrag.qa.chain import QAChain

    def retrieve(**server):
        chain = QAChain.from_index(tmp_path / "served", backend=None, dtype="float32", **server)
        try:
            return [(e.node_id, e.score) for e in chain.retrieve("statin warfarin statin")]
        finally:
            chain.close()

    received = len(handler.received)
    local_hits, served_hits = retrieve(), retrieve(embed_api_base=api_base)
    assert len(handler.received) == received + 1 and len(local_hits) >= 3
    assert [h for h, _ in served_hits] == [h for h, _ in local_hits]
    np.testing.assert_allclose([s for _, s in served_hits], [s for _, s in local_hits], rtol=1e-4)
    assert main(["search", "statin warfarin statin", "--index", str(tmp_path / "served"), "-k", "3",
                 "--embed-api-base", api_base]) == 0
    shown = capsys.readouterr().out
    positions = [shown.index(f"[{h}]") for h, _ in local_hits[:3]]  # shown in the in-process order
    assert positions == sorted(positions)

    # The server gone: a clear error, exit code 2, and what the index holds is untouched.
    down = f"http://127.0.0.1:{serve.free_port()}/v1"
    corpus.write_text(corpus.read_text() + json.dumps({"_id": "d9", "text": "new"}) + "\n")
    assert main([*common, "--index", str(tmp_path / "served"), "--embed-api-base", down]) == 2
    assert f"no embedding server answered at {down}" in capsys.readouterr().err
    assert sorted(dump_index(tmp_path / "served")) == sorted(local)


def test_serve_embed_gives_the_cpu_worker_every_usable_core_unless_told(tmp_path, tiny_llama_dir, monkeypatch):
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("")
    monkeypatch.delenv(serve.CPU_BINDING_ENV, raising=False)
    monkeypatch.setattr(serve.hardware, "usable_core_ids", lambda: [0, 1, 5])

    def env(**kwargs):
        return serve.embed_server_spec(str(tiny_llama_dir), device="cpu", python=python, **kwargs).env

    assert env()[serve.CPU_BINDING_ENV] == "0,1,5"
    assert serve.CPU_BINDING_ENV not in env(cpu_binding="vllm")  # vLLM's own: one core for its scheduler
    with pytest.raises(ValueError, match="cpu binding must be 'all' or 'vllm', got 'half'"):
        env(cpu_binding="half")
    monkeypatch.setenv(serve.CPU_BINDING_ENV, "2-3")  # the user's binding is kept: start() merges os.environ first
    assert serve.CPU_BINDING_ENV not in env()
