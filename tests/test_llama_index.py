"""BMRetrieverEmbedding and BMRetrieverReranker: the adapters add nothing to the encoder's numbers."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from reference_recipe import biomedical_sentences

from bmrag import prompts
from bmrag.encoder import BMRetrieverEncoder
from bmrag.llama_index import BMRetrieverEmbedding, BMRetrieverReranker


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir) -> BMRetrieverEncoder:
    """A tiny random Llama decoder with the official recipe (instruction + EOS pooling + dot product)."""
    return BMRetrieverEncoder.from_pretrained(tiny_llama_dir, dtype="float32")


@pytest.fixture(scope="module")
def minilm() -> BMRetrieverEncoder:
    return BMRetrieverEncoder.from_pretrained("all-MiniLM-L6-v2", dtype="float32")


TEXTS = biomedical_sentences(6, seed=3)
QUERY = "Does metformin reduce cardiovascular events in elderly patients?"


# --------------------------------------------------------------------------------------------- embedding
def test_query_and_text_vectors_equal_the_encoder(tiny):
    emb = BMRetrieverEmbedding(encoder=tiny, task="scifact", embed_batch_size=len(TEXTS))
    query = np.asarray(emb.get_query_embedding(QUERY), dtype=np.float32)
    np.testing.assert_array_equal(query, tiny.encode_queries([QUERY], task="scifact")[0])
    texts = np.asarray(emb.get_text_embedding_batch(TEXTS), dtype=np.float32)
    np.testing.assert_array_equal(texts, tiny.encode_documents(TEXTS, batch_size=len(TEXTS)))
    single = np.asarray(emb.get_text_embedding(TEXTS[0]), dtype=np.float32)
    np.testing.assert_array_equal(single, tiny.encode_documents(TEXTS[:1])[0])
    async_query = np.asarray(asyncio.run(emb.aget_query_embedding(QUERY)), dtype=np.float32)
    np.testing.assert_array_equal(async_query, query)
    async_texts = np.asarray(asyncio.run(emb.aget_text_embedding_batch(TEXTS)), dtype=np.float32)
    np.testing.assert_array_equal(async_texts, texts)


def test_small_embed_batches_give_the_same_vectors(tiny):
    emb = BMRetrieverEmbedding(encoder=tiny, task="scifact", embed_batch_size=2)
    sliced = np.asarray(emb.get_text_embedding_batch(TEXTS), dtype=np.float32)
    np.testing.assert_allclose(sliced, tiny.encode_documents(TEXTS), rtol=1e-4, atol=1e-4)


def test_format_query_shows_the_instruction_and_templates(tiny):
    emb = BMRetrieverEmbedding(encoder=tiny, task="scifact")
    assert emb.format_query("Aspirin prevents cancer") == (
        "Given a scientific claim, retrieve documents that support or refute the claim\n"
        "Query: Aspirin prevents cancer")
    assert emb.format_document("Title body") == "Represent this passage\npassage: Title body"
    assert emb.to_dict()["instruction"] == prompts.get_instruction("scifact")


def test_default_task_is_used_and_logged_once(tiny, caplog):
    with caplog.at_level(logging.INFO, logger="bmrag.llama_index.embedding"):
        emb = BMRetrieverEmbedding(encoder=tiny)
        emb.get_query_embedding(QUERY)
        emb.get_query_embedding(QUERY)
    assert emb.task == prompts.DEFAULT_TASK
    assert emb.instruction == prompts.get_instruction(prompts.DEFAULT_TASK)
    logged = [r.getMessage() for r in caplog.records if "query instruction" in r.getMessage()]
    assert len(logged) == 1 and emb.instruction in logged[0]
    np.testing.assert_array_equal(np.asarray(emb.get_query_embedding(QUERY), dtype=np.float32),
                                  tiny.encode_queries([QUERY], task=prompts.DEFAULT_TASK)[0])


def test_model_without_instruction_template(minilm, caplog):
    with caplog.at_level(logging.WARNING, logger="bmrag.llama_index.embedding"):
        emb = BMRetrieverEmbedding(encoder=minilm, task="scifact")
    assert emb.instruction is None and emb.task is None
    assert "ignoring instruction=None task='scifact'" in caplog.text
    assert emb.format_query(QUERY) == QUERY
    np.testing.assert_array_equal(np.asarray(emb.get_query_embedding(QUERY), dtype=np.float32),
                                  minilm.encode_queries([QUERY])[0])


def test_config_round_trip_reloads_the_same_model(tiny_llama_dir, tiny):
    emb = BMRetrieverEmbedding(model_name=str(tiny_llama_dir), dtype="float32", task="nfcorpus")
    again = BMRetrieverEmbedding.from_dict(emb.to_dict())
    assert again.model_name == emb.model_name and again.instruction == emb.instruction
    assert again.dtype == "float32" and again.max_length == 512 and again.pooling == "last"
    assert again.get_query_embedding(QUERY) == emb.get_query_embedding(QUERY)


def test_unknown_kwargs_are_rejected_with_valid_names(tiny):
    with pytest.raises(TypeError, match=r"'normalise' \(did you mean 'normalize'\?\).*valid: .*embed_batch_size"):
        BMRetrieverEmbedding(encoder=tiny, normalise=True)
    with pytest.raises(TypeError, match=r"'topn' \(did you mean 'top_n'\?\).*valid: .*batch_size"):
        BMRetrieverReranker(encoder=tiny, topn=3)


def test_conflicting_arguments_are_refused(tiny):
    with pytest.raises(ValueError, match=r"\['max_length'\] apply when loading"):
        BMRetrieverEmbedding(encoder=tiny, max_length=128)
    with pytest.raises(ValueError, match="either instruction= or task="):
        BMRetrieverEmbedding(encoder=tiny, task="scifact", instruction="Find passages")
    with pytest.raises(ValueError, match="model_name= .*or encoder="):
        BMRetrieverEmbedding()
    with pytest.raises(KeyError, match="unknown task 'scifacts'.*Did you mean 'scifact'"):
        BMRetrieverEmbedding(encoder=tiny, task="scifacts")


# ---------------------------------------------------------------------------------------------- reranker
def _nodes(texts: list[str]) -> list[NodeWithScore]:
    # First-stage scores descending in input order, so a reorder is visible. Metadata excluded from the
    # embedded text, as bmrag.index.build builds nodes: the reranker then scores exactly the passage text.
    return [NodeWithScore(node=TextNode(id_=f"d{i}", text=t, metadata={"source": "test"},
                                        excluded_embed_metadata_keys=["source"]), score=float(10 - i))
            for i, t in enumerate(texts)]


def test_reranker_orders_by_the_encoder_score_and_keeps_first_stage_scores(tiny):
    rr = BMRetrieverReranker(encoder=tiny, task="scifact", top_n=4)
    nodes = _nodes(TEXTS)
    out = rr.postprocess_nodes(nodes, query_str=QUERY)
    scores = tiny.similarity(tiny.encode_queries([QUERY], task="scifact"), tiny.encode_documents(TEXTS))[0]
    expected = [f"d{i}" for i in np.argsort(-scores, kind="stable")[:4]]
    assert [n.node.node_id for n in out] == expected
    assert expected != ["d0", "d1", "d2", "d3"]  # the test must see a real reorder
    for n in out:
        i = int(n.node.node_id[1:])
        assert n.score == pytest.approx(float(scores[i]), rel=1e-5, abs=1e-4)
        assert n.node.metadata["first_stage_score"] == 10 - i
        assert "first_stage_score" in n.node.excluded_embed_metadata_keys
        assert "first_stage_score" in n.node.excluded_llm_metadata_keys
    assert all("first_stage_score" not in n.node.metadata for n in nodes), "input nodes must not be modified"
    again = rr.postprocess_nodes(out, query_str=QUERY)
    assert [n.node.metadata["first_stage_score"] for n in again] == [n.node.metadata["first_stage_score"]
                                                                     for n in out]


def test_reranker_top_n_empty_input_and_missing_query(tiny):
    rr = BMRetrieverReranker(encoder=tiny, top_n=2)
    assert rr.instruction == prompts.get_instruction(prompts.DEFAULT_TASK)
    assert len(rr.postprocess_nodes(_nodes(TEXTS), query_str=QUERY)) == 2
    assert rr.postprocess_nodes([], query_str=QUERY) == []
    with pytest.raises(ValueError, match="needs the query"):
        rr.postprocess_nodes(_nodes(TEXTS))


def test_reranker_emits_reranking_events(tiny):
    seen: list[str] = []

    class Recorder(BaseEventHandler):
        @classmethod
        def class_name(cls) -> str:
            return "Recorder"

        def handle(self, event, **kwargs) -> None:
            if isinstance(event, (ReRankStartEvent, ReRankEndEvent)):
                seen.append(event.class_name())

    debug = LlamaDebugHandler()
    rr = BMRetrieverReranker(encoder=tiny, top_n=2, callback_manager=CallbackManager([debug]))
    root = get_dispatcher()
    recorder = Recorder()
    root.add_event_handler(recorder)
    try:
        out = rr.postprocess_nodes(_nodes(TEXTS), query_bundle=QueryBundle(QUERY))
    finally:
        root.event_handlers.remove(recorder)
    assert seen == ["ReRankStartEvent", "ReRankEndEvent"]
    pairs = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 1
    assert [n.node.node_id for n in pairs[0][1].payload["nodes"]] == [n.node.node_id for n in out]


def test_reranker_with_a_real_model_promotes_the_relevant_passage(minilm):
    texts = [
        "Colorectal cancer screening with colonoscopy is recommended from age 45.",
        "Wheezing, coughing at night, chest tightness and shortness of breath are common asthma symptoms.",
        "Statins lower LDL cholesterol by inhibiting HMG-CoA reductase.",
    ]
    rr = BMRetrieverReranker(encoder=minilm, top_n=3)
    out = rr.postprocess_nodes(_nodes(texts), query_str="What are the signs of asthma?")
    assert out[0].node.node_id == "d1"
    assert out[0].node.metadata["first_stage_score"] == 9.0
    assert out[0].score > out[1].score >= out[2].score
