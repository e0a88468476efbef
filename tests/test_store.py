"""bmrag.index (store, manifest, build) over a real embedded Chroma in a temp dir, driven through LlamaIndex."""

from __future__ import annotations

import json

import chromadb
import numpy as np
import pytest
from chromadb.config import Settings
from llama_index.core import VectorStoreIndex
from llama_index.core.schema import MetadataMode, TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery
from llama_index.vector_stores.chroma import ChromaVectorStore
from reference_recipe import biomedical_sentences

from bmrag import prompts
from bmrag.encoder import BMRetrieverEncoder
from bmrag.index.build import corpus_to_nodes, index_nodes
from bmrag.index.manifest import MANIFEST_PREFIX, IndexMismatchError, manifest_for, read_manifest
from bmrag.index.sources import read_documents
from bmrag.index.store import HNSW_EF_SEARCH, open_store
from bmrag.llama_index import BMRetrieverEmbedding


@pytest.fixture(scope="module")
def minilm() -> BMRetrieverEmbedding:
    return BMRetrieverEmbedding(model_name="all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir) -> BMRetrieverEmbedding:
    return BMRetrieverEmbedding(model_name=str(tiny_llama_dir), dtype="float32", task="scifact")


@pytest.fixture(scope="module")
def sample() -> dict[str, dict]:
    """30 bundled documents: 10 from each source (the bundled file lists PubMedQA, MedQuAD, SciFact)."""
    corpus, _ = read_documents(None)
    ids = list(corpus)
    chosen = ids[:10] + ids[150:160] + ids[250:260]
    return {doc_id: corpus[doc_id] for doc_id in chosen}


@pytest.fixture(scope="module")
def built(tmp_path_factory, minilm, sample):
    """A persisted index of ``sample``, closed after building: tests reopen it."""
    path = tmp_path_factory.mktemp("index")
    nodes = corpus_to_nodes(sample, minilm.encoder)
    store = open_store(path, minilm)
    report = index_nodes(store, nodes, minilm)
    store.close()
    return path, nodes, report


def _longest_sentence(text: str) -> str:
    # The longest sentence of a document is specific to it; a short one ("Severe symptoms can be fatal") is not.
    return max((s.strip() for line in text.splitlines() for s in line.split(". ")), key=lambda s: len(s.split()))


def test_reopened_index_ranks_the_source_document_first(built, minilm, sample):
    path, nodes, report = built
    assert report.added == len(nodes) and report.documents_added == len(sample) and report.skipped == 0
    store = open_store(path, minilm, create=False)
    try:
        assert store.count() == len(nodes)
        # Created with bmrag's HNSW search width (evals/bench_hnsw.py), which Chroma keeps across reopening.
        assert store._collection.configuration["hnsw"]["ef_search"] == HNSW_EF_SEARCH == 200
        retriever = VectorStoreIndex.from_vector_store(store, embed_model=minilm).as_retriever(similarity_top_k=3)
        for doc_id in (list(sample)[3], list(sample)[13], list(sample)[23]):  # one per source
            hits = retriever.retrieve(_longest_sentence(sample[doc_id]["text"]))
            assert hits[0].node.metadata["doc_id"] == doc_id
            assert hits[0].node.node_id.startswith(f"{doc_id}#")
            assert hits[0].score >= hits[1].score >= hits[2].score
    finally:
        store.close()


def test_scores_are_the_model_similarity_not_exp_distance(built, minilm, sample):
    path, _, _ = built
    store = open_store(path, minilm, create=False)
    try:
        question = "What are the symptoms of asthma?"
        hits = VectorStoreIndex.from_vector_store(store, embed_model=minilm).as_retriever(
            similarity_top_k=5).retrieve(question)
        q = np.asarray(minilm.get_query_embedding(question), dtype=np.float32)
        stored = store.client.get(ids=[h.node.node_id for h in hits], include=["embeddings"])
        vectors = dict(zip(stored["ids"], np.asarray(stored["embeddings"], dtype=np.float32)))
        for hit in hits:
            assert hit.score == pytest.approx(float(q @ vectors[hit.node.node_id]), abs=1e-5)
    finally:
        store.close()


def test_reindexing_adds_nothing(built, minilm):
    path, nodes, _ = built
    store = open_store(path, minilm)
    try:
        report = index_nodes(store, nodes, minilm)
        assert (report.added, report.skipped, report.documents_added) == (0, len(nodes), 0)
        assert store.count() == len(nodes)
        # Writing the same ids again (upsert) replaces, never duplicates.
        again = [n.model_copy() for n in nodes[:5]]
        for node, vector in zip(again, minilm.get_text_embedding_batch([n.get_content("embed") for n in again])):
            node.embedding = vector
        store.add(again)
        assert store.count() == len(nodes)
        # A changed document is replaced by deleting it (all its chunks) and indexing again.
        doc_id = nodes[0].ref_doc_id
        chunks = [n for n in nodes if n.ref_doc_id == doc_id]
        store.delete(doc_id)
        assert store.count() == len(nodes) - len(chunks)
        report = index_nodes(store, nodes, minilm)
        assert (report.added, report.documents_added) == (len(chunks), 1) and store.count() == len(nodes)
    finally:
        store.close()


def test_manifest_records_model_recipe_and_space(built, minilm):
    path, nodes, _ = built
    manifest = read_manifest(path)
    assert manifest["model"] == "all-MiniLM-L6-v2"
    assert manifest["space"] == "cosine"
    assert manifest["dim"] == 384
    assert json.loads(manifest["recipe"]) == minilm.encoder.recipe.to_dict()
    assert manifest["chroma_version"] == chromadb.__version__ and manifest["bmrag_version"]
    assert manifest["count"] == len(nodes)


def test_reopening_with_another_model_is_refused(built, tiny, tiny_llama_dir):
    path, _, _ = built
    with pytest.raises(IndexMismatchError, match=rf"built with model 'all-MiniLM-L6-v2'.*embedding model is "
                                                 rf"model '{tiny_llama_dir}'.*differ in model, recipe, space, dim"):
        open_store(path, tiny)


def test_missing_index_and_collection(tmp_path, minilm, built):
    with pytest.raises(FileNotFoundError, match="no index directory"):
        open_store(tmp_path / "absent", minilm, create=False)
    with pytest.raises(FileNotFoundError, match="no collection 'other' \\(collections: bmrag\\)"):
        open_store(built[0], minilm, collection="other", create=False)


def test_collections_not_made_by_bmrag_or_in_the_wrong_space_are_refused(tmp_path, minilm):
    client = chromadb.PersistentClient(str(tmp_path), settings=Settings(anonymized_telemetry=False))
    client.create_collection("plain", embedding_function=None)
    manifest = {MANIFEST_PREFIX + k: v for k, v in manifest_for(minilm.encoder).items()}
    client.create_collection("l2space", embedding_function=None, metadata=manifest)  # Chroma's default: l2
    client.close()
    with pytest.raises(IndexMismatchError, match="no bmrag manifest"):
        open_store(tmp_path, minilm, collection="plain")
    with pytest.raises(IndexMismatchError, match=r"space 'l2'.*space 'cosine'.*differ in space"):
        open_store(tmp_path, minilm, collection="l2space")


def test_dot_product_models_get_ip_space_and_dot_scores(tmp_path, tiny):
    texts = biomedical_sentences(12, seed=5)
    corpus = {f"s{i}": {"title": "", "text": t} for i, t in enumerate(texts)}
    store = open_store(tmp_path, tiny)
    try:
        assert store.client.configuration["hnsw"]["space"] == "ip"
        index_nodes(store, corpus_to_nodes(corpus, tiny.encoder), tiny)
        question = texts[4]
        hits = VectorStoreIndex.from_vector_store(store, embed_model=tiny).as_retriever(
            similarity_top_k=12).retrieve(question)
        enc = tiny.encoder
        exact = enc.similarity(enc.encode_queries([question], task="scifact"), enc.encode_documents(texts))[0]
        assert [h.node.metadata["doc_id"] for h in hits] == [f"s{i}" for i in np.argsort(-exact)]
        for hit in hits:
            assert hit.score == pytest.approx(float(exact[int(hit.node.metadata["doc_id"][1:])]), rel=1e-4, abs=1e-3)
    finally:
        store.close()


def test_large_dot_products_do_not_overflow(tmp_path, tiny):
    # Unnormalised BMRetriever vectors reach dot products far above 710, where exp(-distance) overflows.
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4, tiny.encoder.dim)).astype(np.float32) * 10
    nodes = [TextNode(id_=f"v{i}#0", text=f"vector {i}", embedding=v.tolist()) for i, v in enumerate(vectors)]
    store = open_store(tmp_path, tiny)
    try:
        store.add(nodes)
        result = store.query(VectorStoreQuery(query_embedding=vectors[0].tolist(), similarity_top_k=4))
        dots = vectors @ vectors[0]
        assert dots[0] > 710
        assert result.ids[0] == "v0#0"
        np.testing.assert_allclose(result.similarities, np.sort(dots)[::-1], rtol=1e-4)
        with pytest.raises(OverflowError):
            ChromaVectorStore(chroma_collection=store.client).query(
                VectorStoreQuery(query_embedding=vectors[0].tolist(), similarity_top_k=4))
    finally:
        store.close()


def test_writes_are_batched_under_the_max_batch_size(tmp_path, tiny):
    store = open_store(tmp_path, tiny)
    sizes: list[int] = []
    upsert = store.client.upsert

    def spy(**kwargs):
        sizes.append(len(kwargs["ids"]))
        return upsert(**kwargs)

    try:
        store._max_batch_size = 4
        store.client.upsert = spy
        corpus = {f"s{i}": {"title": "", "text": t} for i, t in enumerate(biomedical_sentences(10, seed=7))}
        report = index_nodes(store, corpus_to_nodes(corpus, tiny.encoder), tiny)
        assert report.added == 10 and store.count() == 10
        assert sizes == [4, 4, 2]
    finally:
        store.close()


def test_nodes_embed_as_title_plus_text_and_long_documents_are_chunked(minilm):
    enc = minilm.encoder
    long_text = " ".join(biomedical_sentences(60, seed=1))
    corpus = {
        "short": {"title": "Aspirin", "text": "Aspirin reduces fever.",
                  "metadata": {"source": "x", "tags": ["a", "b"]}},
        "long": {"title": "A long review", "text": long_text, "metadata": {}},
    }
    nodes = corpus_to_nodes(corpus, enc)
    short = [n for n in nodes if n.metadata["doc_id"] == "short"]
    assert [n.node_id for n in short] == ["short#0"]
    assert short[0].get_content(MetadataMode.EMBED) == prompts.join_title("Aspirin reduces fever.", "Aspirin")
    assert short[0].metadata["tags"] == "a; b"  # Chroma metadata must be flat
    assert short[0].ref_doc_id == "short"
    long = [n for n in nodes if n.metadata["doc_id"] == "long"]
    assert len(long) > 2 and [n.node_id for n in long] == [f"long#{i}" for i in range(len(long))]
    for node in long:
        text = node.get_content(MetadataMode.EMBED)
        assert text.startswith("A long review ")
        assert len(enc.tokenize([enc.format_document(text)])[0]) <= enc.recipe.max_length
    np.testing.assert_array_equal(np.asarray(minilm.get_text_embedding(short[0].get_content(MetadataMode.EMBED)),
                                             dtype=np.float32),
                                  enc.encode_documents([{"title": "Aspirin", "text": "Aspirin reduces fever."}])[0])


def test_store_needs_a_bmretriever_model(tmp_path):
    with pytest.raises(TypeError, match="expected a BMRetrieverEmbedding or BMRetrieverEncoder, got str"):
        open_store(tmp_path, "all-MiniLM-L6-v2")  # type: ignore[arg-type]


def test_encoder_objects_are_accepted(tmp_path, tiny):
    encoder: BMRetrieverEncoder = tiny.encoder
    store = open_store(tmp_path, encoder)
    try:
        report = index_nodes(store, corpus_to_nodes({"a": {"title": "", "text": "Sepsis worsens renal failure."}},
                                                    encoder), encoder)
        assert report.added == 1 and store.manifest["model"] == encoder.source.model
    finally:
        store.close()
