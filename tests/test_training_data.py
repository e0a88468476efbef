"""retriever_training data tools: converters + leakage checks, Stage I pairs, hard-negative mining, synthesis.

The synthesis tests talk to a tiny HTTP server started on 127.0.0.1 inside the test: a stand-in for
vLLM's OpenAI-compatible ``/v1/chat/completions`` (it returns canned answers), so the request, parse,
retry and filter logic runs for real without an LLM.
"""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from shared_data import SHARED_DATA

from bmrag.index.readers import DataError, load_qrels
from retriever_training.data import Group, convert, eval_query_texts, normalize_text
from retriever_training.mining import mine_hard_negatives
from retriever_training.pairs import STAGE1_INSTRUCTIONS, PairReport, PairRules, make_pairs
from retriever_training.synth import ChatClient, EndpointError, SynthReport, brainstorm_tasks, generate_examples

DATA = SHARED_DATA
needs_data = pytest.mark.skipif(not (DATA / "scifact" / "qrels" / "train.tsv").is_file(),
                                reason="shared data folder not present")


# ------------------------------------------------------------------------------------------ converters
def _beir(folder: Path, corpus: dict[str, str], queries: dict[str, str], qrels: dict[str, dict[str, list]]) -> Path:
    (folder / "qrels").mkdir(parents=True)
    with gzip.open(folder / "corpus.jsonl.gz", "wt") as f:
        for doc_id, text in corpus.items():
            f.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    lines = [json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()]
    (folder / "queries.jsonl").write_text("".join(lines))
    for split, pairs in qrels.items():
        rows = "".join(f"{q}\t{d}\t1\n" for q, d in pairs)
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return folder


def test_converter_refuses_test_queries_and_drops_test_texts(tmp_path):
    corpus = {f"d{i}": f"document number {i} about kidney disease" for i in range(6)}
    queries = {"t1": "Does statin therapy reduce mortality?", "a": "Does aspirin help?",
               "b": "does statin therapy reduce mortality", "c": "What causes gout?"}
    _beir(tmp_path / "scifact", corpus, queries,
          {"test": [("t1", "d0")], "train": [("a", "d1"), ("b", "d2"), ("c", "d3")]})
    converted = convert("scifact", tmp_path)
    assert [g.id for g in converted.groups] == ["scifact:a", "scifact:c"]
    assert converted.report.dropped_same_text_as_eval_query == 1  # "b" repeats test query t1's text
    assert converted.barred_doc_ids == {"d0"}
    assert converted.groups[0].instruction.startswith("Given a scientific claim")

    leaky = _beir(tmp_path / "leaky" / "scifact", corpus, queries, {"test": [("t1", "d0")], "train": [("t1", "d1")]})
    with pytest.raises(DataError, match=r"1 query id\(s\) also in qrels/test.tsv.*refusing to train on test queries"):
        convert("scifact", leaky.parent)
    with pytest.raises(ValueError, match="unknown training source 'pubmed'; valid: scifact, bioasq"):
        convert("pubmed", tmp_path)


@needs_data
def test_real_converters_keep_test_splits_out():
    eval_texts = eval_query_texts(DATA)
    for source, folder, train_queries in (("scifact", "scifact", 809), ("pubmedqa", "pubmedqa-retrieval", 500)):
        converted = convert(source, DATA, eval_texts)
        test_ids = set(load_qrels(DATA / folder, "test"))
        assert converted.report.train_queries == train_queries
        assert not {g.id.split(":", 1)[1] for g in converted.groups} & test_ids
        assert not {normalize_text(g.query) for g in converted.groups} & eval_texts
        assert converted.barred_doc_ids == {d for docs in load_qrels(DATA / folder, "test").values() for d in docs}
    mqp = convert("mqp", DATA, eval_texts)
    assert mqp.groups and all(g.negatives and g.positives for g in mqp.groups)


# ----------------------------------------------------------------------------------------------- pairs
def test_stage1_pairs_follow_the_rules():
    words = [f"w{i}" for i in range(200)]
    docs = [{"id": "a", "title": "A short but real title", "text": " ".join(words)},
            {"id": "b", "title": "x", "text": " ".join(words[:20])},  # title too short; too short for spans
            {"id": "c", "title": "A short but real title", "text": " ".join(words)}]  # duplicate of a
    rules = PairRules(query_words=(5, 10), passage_words=(20, 40), spans_per_doc=3, seed=1)
    report = PairReport()
    groups = list(make_pairs(docs, rules, report))
    assert (report.documents, report.duplicates, report.title_body, report.span_span,
            report.too_short_for_spans) == (2, 1, 1, 3, 1)
    assert groups[0].query == "A short but real title" and groups[0].instruction == STAGE1_INSTRUCTIONS["title_body"]
    for group in groups[1:]:
        query, positive = group.query.split(), group.positives[0].split()
        assert 5 <= len(query) <= 10 and 20 <= len(positive) <= 40
        assert not set(query) & set(positive)  # disjoint spans of the same document
        assert group.instruction == STAGE1_INSTRUCTIONS["span_span"] and not group.negatives
    assert [g.query for g in make_pairs(docs, rules)] == [g.query for g in groups]  # seeded
    with pytest.raises(ValueError, match="query_words must be"):
        PairRules(query_words=(10, 5))


# ---------------------------------------------------------------------------------------------- mining
def test_bm25_mining_excludes_positives_barred_and_respects_range_and_margin():
    corpus = {f"d{i}": f"kidney failure dialysis outcome {' '.join(['kidney'] * (10 - i))} note {i}"
              for i in range(10)}
    corpus["same"] = corpus["d0"]  # another id with the positive's text
    corpus["other"] = "unrelated text on bird migration"
    group = Group(query="kidney failure dialysis", positives=[corpus["d0"]], positive_ids=["d0"])
    mined, report = mine_hard_negatives([group], corpus, rank_range=(0, 11), count=20, sample="top",
                                        barred_ids={"d1"})
    negatives = mined[0].negatives
    assert corpus["d0"] not in negatives and corpus["d1"] not in negatives and negatives
    assert report.excluded_positive == 1 and report.excluded_same_text_as_positive == 1
    assert report.excluded_barred == 1 and report.groups_short == 1
    assert group.negatives == []  # input untouched

    ranked, _ = mine_hard_negatives([group], corpus, rank_range=(4, 8), count=2, sample="top")
    top, _ = mine_hard_negatives([group], corpus, rank_range=(0, 8), count=2, sample="top")
    assert ranked[0].negatives != top[0].negatives
    strict, strict_report = mine_hard_negatives([group], corpus, rank_range=(0, 11), count=20, max_ratio=0.9)
    assert strict_report.excluded_margin > 0 and len(strict[0].negatives) < len(negatives) + 1
    with pytest.raises(ValueError, match="rank_range must be"):
        mine_hard_negatives([group], corpus, rank_range=(5, 5))
    with pytest.raises(ValueError, match="method='encoder' needs encoder="):
        mine_hard_negatives([group], corpus, method="encoder")


def test_encoder_mining_uses_the_encoder_scores(tiny_llama_dir):
    from bmrag.encoder import BMRetrieverEncoder

    encoder = BMRetrieverEncoder.from_pretrained(tiny_llama_dir, dtype="float32")
    corpus = {f"d{i}": f"Statin therapy and outcome number {i}" for i in range(8)}
    group = Group(query="statin outcome", positives=[corpus["d3"]], positive_ids=["d3"], instruction="Find it")
    mined, report = mine_hard_negatives([group], corpus, method="encoder", encoder=encoder, rank_range=(0, 8),
                                        count=3, sample="top")
    q = encoder.encode([encoder.format_query("statin outcome", instruction="Find it")])
    d = encoder.encode_documents(list(corpus.values()))
    order = [f"d{i}" for i in (-(q @ d.T)[0]).argsort(kind="stable") if f"d{i}" != "d3"]
    assert mined[0].negatives == [corpus[i] for i in order[:3]]
    assert report.settings["encoder"] == encoder.source.model


# ------------------------------------------------------------------------------------------------ synth
class _StandIn(BaseHTTPRequestHandler):
    """Canned OpenAI chat completions (a stand-in for vLLM): brainstorm lists, then examples by task."""

    answers = {
        "task A about drugs retrieval": '```json\n{"user_query": "metformin side effects", "positive_document": '
                                        '"%s", "hard_negative_document": "%s"}\n```',
        "task B about genes retrieval": "not json at all",
        "task C about trials retrieval": '{"user_query": "metformin side effects", "positive_document": "%s", '
                                         '"hard_negative_document": "%s"}',  # duplicate query
        "task D about cells retrieval": '{"user_query": "x y z", "positive_document": "%s", '
                                        '"hard_negative_document": "%s"}',  # positive == negative below
    }
    requests: list[dict] = []
    failures_left = 1

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        if type(self).failures_left:
            type(self).failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        prompt = body["messages"][0]["content"]
        long_a, long_b = " ".join(["alpha"] * 20), " ".join(["beta"] * 20)
        if prompt.startswith("Brainstorm"):
            text = json.dumps(list(self.answers) + ["Task A about drugs retrieval", "short", 42])
        else:
            task = next(t for t in self.answers if t in prompt)
            second = long_a if task.startswith("task D") else long_b
            text = self.answers[task].replace("%s", long_a, 1).replace("%s", second, 1)
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture()
def stand_in_server():
    _StandIn.requests, _StandIn.failures_left = [], 1
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_synthesis_requests_parses_filters_and_dedupes(stand_in_server):
    client = ChatClient(api_base=stand_in_server, model="smollm2", backoff=0.01)
    report = SynthReport()
    tasks = brainstorm_tasks(client, rounds=1, report=report)
    assert tasks == list(_StandIn.answers)  # case-duplicate, too short and non-string entries removed
    assert (report.tasks_duplicate, report.tasks_bad, report.requests) == (1, 2, 2)  # 503 retried once
    groups = generate_examples(client, tasks, report=report)
    assert [g.query for g in groups] == ["metformin side effects"]
    assert groups[0].instruction == "task A about drugs retrieval" and groups[0].negatives[0].startswith("beta")
    assert (report.unparsable, report.duplicate_query, report.positive_equals_negative) == (1, 1, 1)
    assert _StandIn.requests[-1]["model"] == "smollm2" and _StandIn.requests[-1]["messages"][0]["role"] == "user"


def test_synthesis_never_guesses_a_server():
    with pytest.raises(ValueError, match="api_base must be an http"):
        ChatClient(api_base="", model="m")
    client = ChatClient(api_base="http://127.0.0.1:9/v1", model="m", retries=0, timeout=2)
    with pytest.raises(EndpointError, match="cannot reach the server"):
        client.chat("hello")
