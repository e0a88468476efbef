"""bmrag.index.sources: PubMed/MEDLINE XML, text folders and BEIR files into records; `bmrag index` on them
(real Chroma, real models); a SIGKILLed `bmrag index` resumes to the same index as a clean run."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chromadb
import pytest
from chromadb.config import Settings
from llama_index.core import VectorStoreIndex
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters

from bmrag import cli
from bmrag.index.readers import DataError
from bmrag.index.sources import SourceReport, detect_source, read_source
from bmrag.qa.filters import build_filters

REPO = Path(__file__).resolve().parents[1]

# Four PubmedArticle records as the PubMed baseline files write them (DOCTYPE, attributes, inline markup,
# a CommentsCorrections PMID that must not be taken for the article's own).
MEDLINE_XML = """<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2025//EN" \
"https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_250101.dtd">
<PubmedArticleSet>
  <PubmedArticle>
    <MedlineCitation Status="MEDLINE" Owner="NLM" IndexingMethod="Manual">
      <PMID Version="1">21881325</PMID>
      <DateCompleted><Year>2012</Year><Month>01</Month><Day>10</Day></DateCompleted>
      <Article PubModel="Print-Electronic">
        <Journal>
          <ISSN IssnType="Electronic">1880-4276</ISSN>
          <JournalIssue CitedMedium="Internet">
            <Volume>75</Volume><Issue>10</Issue>
            <PubDate><Year>2011</Year><Month>Oct</Month></PubDate>
          </JournalIssue>
          <Title>Circulation journal : official journal of the Japanese Circulation Society</Title>
          <ISOAbbreviation>Circ J</ISOAbbreviation>
        </Journal>
        <ArticleTitle>Preoperative statin therapy and atrial fibrillation after <i>coronary</i> artery bypass \
grafting: a randomized trial.</ArticleTitle>
        <ELocationID EIdType="doi" ValidYN="Y">10.1253/circj.cj-11-0443</ELocationID>
        <Abstract>
          <AbstractText Label="BACKGROUND" NlmCategory="BACKGROUND">Statins have pleiotropic effects, \
including prevention of atrial fibrillation.</AbstractText>
          <AbstractText Label="METHODS AND RESULTS" NlmCategory="RESULTS">221 patients were randomized to \
statins or placebo before bypass surgery; AF occurred in 12% vs 25%.</AbstractText>
          <AbstractText Label="CONCLUSIONS" NlmCategory="CONCLUSIONS">Preoperative statins reduced \
postoperative AF.</AbstractText>
        </Abstract>
        <PublicationTypeList>
          <PublicationType UI="D016428">Journal Article</PublicationType>
          <PublicationType UI="D016449">Randomized Controlled Trial</PublicationType>
        </PublicationTypeList>
      </Article>
      <MeshHeadingList>
        <MeshHeading><DescriptorName UI="D001281" MajorTopicYN="N">Atrial Fibrillation</DescriptorName>\
<QualifierName UI="Q000517" MajorTopicYN="Y">prevention &amp; control</QualifierName></MeshHeading>
        <MeshHeading><DescriptorName UI="D001026" MajorTopicYN="Y">Coronary Artery Bypass</DescriptorName>\
</MeshHeading>
        <MeshHeading><DescriptorName UI="D019161" MajorTopicYN="N">Hydroxymethylglutaryl-CoA Reductase \
Inhibitors</DescriptorName></MeshHeading>
      </MeshHeadingList>
      <CommentsCorrectionsList>
        <CommentsCorrections RefType="CommentIn"><RefSource>Circ J. 2011</RefSource>\
<PMID Version="1">99999999</PMID></CommentsCorrections>
      </CommentsCorrectionsList>
    </MedlineCitation>
    <PubmedData>
      <ArticleIdList><ArticleId IdType="pubmed">21881325</ArticleId></ArticleIdList>
    </PubmedData>
  </PubmedArticle>
  <PubmedArticle>
    <MedlineCitation Status="MEDLINE" Owner="NLM">
      <PMID Version="1">10000002</PMID>
      <Article PubModel="Print">
        <Journal>
          <JournalIssue CitedMedium="Print">
            <PubDate><MedlineDate>1998 Dec-1999 Jan</MedlineDate></PubDate>
          </JournalIssue>
          <Title>The Cochrane database of systematic reviews</Title>
        </Journal>
        <ArticleTitle>Inhaled corticosteroids for chronic asthma: a systematic review and \
meta-analysis.</ArticleTitle>
        <Abstract>
          <AbstractText>Inhaled corticosteroids reduce exacerbations of asthma in adults and children.\
</AbstractText>
        </Abstract>
        <PublicationTypeList>
          <PublicationType UI="D016428">Journal Article</PublicationType>
          <PublicationType UI="D017418">Meta-Analysis</PublicationType>
          <PublicationType UI="D000078182">Systematic Review</PublicationType>
          <PublicationType UI="D016454">Review</PublicationType>
        </PublicationTypeList>
      </Article>
      <MeshHeadingList>
        <MeshHeading><DescriptorName UI="D001249" MajorTopicYN="Y">Asthma</DescriptorName></MeshHeading>
        <MeshHeading><DescriptorName UI="D000305" MajorTopicYN="N">Adrenal Cortex Hormones</DescriptorName>\
</MeshHeading>
      </MeshHeadingList>
    </MedlineCitation>
    <PubmedData>
      <ArticleIdList><ArticleId IdType="doi">10.1002/14651858.CD000001</ArticleId></ArticleIdList>
    </PubmedData>
  </PubmedArticle>
  <PubmedArticle>
    <MedlineCitation Status="PubMed-not-MEDLINE" Owner="NLM">
      <PMID Version="1">10000003</PMID>
      <Article PubModel="Print">
        <Journal>
          <JournalIssue CitedMedium="Print"><PubDate><Year>1975</Year></PubDate></JournalIssue>
          <Title>Lancet (London, England)</Title>
        </Journal>
        <ArticleTitle>Hypertension in the elderly: practice guideline.</ArticleTitle>
        <PublicationTypeList>
          <PublicationType UI="D016428">Journal Article</PublicationType>
          <PublicationType UI="D017065">Practice Guideline</PublicationType>
        </PublicationTypeList>
      </Article>
    </MedlineCitation>
  </PubmedArticle>
  <PubmedArticle>
    <MedlineCitation Status="MEDLINE" Owner="NLM">
      <PMID Version="1">10000004</PMID>
      <Article PubModel="Print">
        <Journal><JournalIssue CitedMedium="Print"><PubDate><Year>1980</Year></PubDate></JournalIssue>\
<Title>X</Title></Journal>
        <ArticleTitle></ArticleTitle>
        <PublicationTypeList><PublicationType UI="D016428">Journal Article</PublicationType>\
</PublicationTypeList>
      </Article>
    </MedlineCitation>
  </PubmedArticle>
  <DeleteCitation><PMID Version="1">10000009</PMID></DeleteCitation>
</PubmedArticleSet>
"""

FLAGS_OFF = {"is_rct": 0, "is_systematic_review": 0, "is_meta_analysis": 0, "is_guideline": 0, "is_review": 0}
EXPECTED_XML = {
    "21881325": {
        "title": "Preoperative statin therapy and atrial fibrillation after coronary artery bypass grafting: a "
                 "randomized trial.",
        "text": "BACKGROUND: Statins have pleiotropic effects, including prevention of atrial fibrillation.\n"
                "METHODS AND RESULTS: 221 patients were randomized to statins or placebo before bypass surgery; AF "
                "occurred in 12% vs 25%.\nCONCLUSIONS: Preoperative statins reduced postoperative AF.",
        "metadata": {"source": "PubMed", "pmid": "21881325",
                     "journal": "Circulation journal : official journal of the Japanese Circulation Society",
                     "year": 2011, **FLAGS_OFF, "is_rct": 1, "pub_type": "rct",
                     "publication_types": "Journal Article; Randomized Controlled Trial",
                     "mesh_terms": "Atrial Fibrillation; Coronary Artery Bypass; Hydroxymethylglutaryl-CoA "
                                   "Reductase Inhibitors",
                     "doi": "10.1253/circj.cj-11-0443", "file": "pubmed.xml"},
    },
    "10000002": {
        "title": "Inhaled corticosteroids for chronic asthma: a systematic review and meta-analysis.",
        "text": "Inhaled corticosteroids reduce exacerbations of asthma in adults and children.",
        "metadata": {"source": "PubMed", "pmid": "10000002", "journal": "The Cochrane database of systematic reviews",
                     "year": 1998, **FLAGS_OFF, "is_systematic_review": 1, "is_meta_analysis": 1,
                     "is_review": 1, "pub_type": "meta-analysis",
                     "publication_types": "Journal Article; Meta-Analysis; Systematic Review; Review",
                     "mesh_terms": "Asthma; Adrenal Cortex Hormones", "doi": "10.1002/14651858.CD000001",
                     "file": "pubmed.xml"},
    },
    "10000003": {  # no abstract: kept with its title
        "title": "Hypertension in the elderly: practice guideline.",
        "text": "",
        "metadata": {"source": "PubMed", "pmid": "10000003", "journal": "Lancet (London, England)", "year": 1975,
                     **FLAGS_OFF, "is_guideline": 1, "pub_type": "guideline",
                     "publication_types": "Journal Article; Practice Guideline", "mesh_terms": "",
                     "file": "pubmed.xml"},
    },
}


def _write(path: Path, text: str | bytes) -> Path:
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------ PubMed XML
@pytest.mark.parametrize("name", ["pubmed.xml", "pubmed.xml.gz"])
def test_medline_xml_records_and_metadata(tmp_path, name):
    path = _write(tmp_path / name, MEDLINE_XML)
    assert detect_source(path) == "pubmed"
    records, report = read_source(path)
    expected = {pmid: {**rec, "metadata": {**rec["metadata"], "file": name}} for pmid, rec in EXPECTED_XML.items()}
    assert records == expected
    assert list(records) == ["21881325", "10000002", "10000003"]  # file order
    assert (report.read, report.skipped_empty, report.skipped_bad, report.ignored) == (3, ["10000004"], [], 1)
    assert report.summary().startswith("Sources: 3 documents read from 1 file (PubMed XML); 1 empty skipped; "
                                       "0 malformed skipped; 0 duplicate ids; 1 other entries ignored.")


def test_malformed_xml_names_file_and_line(tmp_path):
    lines = MEDLINE_XML.splitlines()
    broken_at = next(i for i, line in enumerate(lines) if "10000002" in line)  # inside the 2nd article
    lines[broken_at] = lines[broken_at].replace("</PMID>", "</PMDI>")
    path = _write(tmp_path / "bad.xml", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"bad\.xml:{broken_at + 1}: malformed XML \(mismatched tag"):
        read_source(path)
    # --skip-bad keeps what came before (XML cannot be resumed after a syntax error) and says so.
    records, report = read_source(path, skip_bad=True)
    assert list(records) == ["21881325"]
    assert len(report.skipped_bad) == 1
    assert report.skipped_bad[0].startswith(f"{path}:{broken_at + 1}: malformed XML")
    assert report.skipped_bad[0].endswith("the rest of this file was not read")


def test_article_without_pmid_names_its_line_and_skip_bad_counts_it(tmp_path):
    text = MEDLINE_XML.replace('<PMID Version="1">10000002</PMID>', "")
    article_line = text.splitlines().index("  <PubmedArticle>", 5) + 1  # the 2nd article's opening line
    path = _write(tmp_path / "nopmid.xml", text)
    with pytest.raises(DataError, match=rf"nopmid\.xml:{article_line}: PubmedArticle without MedlineCitation/PMID"):
        read_source(path)
    records, report = read_source(path, skip_bad=True)
    assert list(records) == ["21881325", "10000003"]
    assert report.skipped_bad == [f"{path}:{article_line}: PubmedArticle without MedlineCitation/PMID"]


def test_not_pubmed_xml_and_truncated_gzip_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"other\.xml:2: not PubMed/MEDLINE XML \(root element <rss>"):
        read_source(_write(tmp_path / "other.xml", '<?xml version="1.0"?>\n<rss><item/></rss>\n'))
    gz = _write(tmp_path / "cut.xml.gz", MEDLINE_XML)
    gz.write_bytes(gz.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"cut\.xml\.gz:\d+: cannot read"):
        read_source(gz)


def test_xml_folder_reports_duplicate_pmids_and_keeps_the_first(tmp_path):
    _write(tmp_path / "pubmed25n0001.xml.gz", MEDLINE_XML)
    newer = MEDLINE_XML.replace("Preoperative statins reduced", "Statins reduced")
    _write(tmp_path / "sub" / "pubmed25n0002.xml", newer)
    _write(tmp_path / "pubmed25n0001.xml.gz.md5", "0123")  # the checksum files PubMed ships alongside
    records, report = read_source(tmp_path)
    assert len(records) == 3 and report.read == 3 and report.files == 2 and report.ignored == 1 + 2
    assert report.duplicate_ids == ["21881325", "10000002", "10000003"]
    assert "Preoperative statins reduced" in records["21881325"]["text"]  # the first occurrence
    assert records["21881325"]["metadata"]["file"] == "pubmed25n0001.xml.gz"
    assert "3 duplicate ids, first occurrence kept (21881325, 10000002, 10000003)" in report.summary()


# ------------------------------------------------------------------------------------------ text folders
def test_text_folder(tmp_path):
    _write(tmp_path / "asthma.md", "Intro line before the heading.\n\n## Asthma  ##\n\nAsthma narrows the airways.\n")
    _write(tmp_path / "notes" / "statins.txt", "\n  Statins and AF  \nStatins may prevent atrial fibrillation.\n")
    _write(tmp_path / "notes" / "latin1.txt", "Caf\xe9 au lait spots\nSeen in neurofibromatosis; na\xefve "
                                              "patients.\n".encode("latin-1"))
    _write(tmp_path / "bom.txt", "\ufeffTitle with BOM\nbody \ufffd kept\n")  # a real U+FFFD is not a replacement
    _write(tmp_path / "empty.txt", "")
    _write(tmp_path / "blank.md", "  \n\n")
    _write(tmp_path / "dup.md", "# From md\nfirst\n")
    _write(tmp_path / "dup.txt", "From txt\nsecond\n")
    _write(tmp_path / "scan.pdf", b"%PDF-1.4")
    _write(tmp_path / ".git" / "HEAD.txt", "ref: refs/heads/main\n")
    assert detect_source(tmp_path) == "text"
    records, report = read_source(tmp_path)
    assert records == {
        "asthma": {"title": "Asthma", "text": "Intro line before the heading.\n\n\nAsthma narrows the airways.",
                   "metadata": {"source": "asthma.md"}},
        "bom": {"title": "Title with BOM", "text": "body \ufffd kept", "metadata": {"source": "bom.txt"}},
        "dup": {"title": "From md", "text": "first", "metadata": {"source": "dup.md"}},
        "notes/latin1": {"title": "Caf\ufffd au lait spots", "text": "Seen in neurofibromatosis; na\ufffdve patients.",
                         "metadata": {"source": "notes/latin1.txt"}},
        "notes/statins": {"title": "Statins and AF", "text": "Statins may prevent atrial fibrillation.",
                          "metadata": {"source": "notes/statins.txt"}},
    }
    assert report.read == 5 and report.files == 8
    assert sorted(report.skipped_empty) == ["blank.md", "empty.txt"]
    assert report.duplicate_ids == ["dup"]
    assert report.decode_replacements == 2 and report.files_with_replacements == ["notes/latin1.txt"]
    assert report.ignored == 1  # scan.pdf (hidden folders are not even looked at)
    assert "2 non-UTF-8 bytes replaced by U+FFFD (in notes/latin1.txt)" in report.summary()
    # One file works too; its id is the stem.
    single, _ = read_source(tmp_path / "notes" / "statins.txt")
    assert list(single) == ["statins"]


@pytest.mark.parametrize(("setup", "match"), [
    (lambda p: p / "missing", r"missing: no such corpus"),
    (lambda p: _write(p / "x.csv", "a,b\n"), r"x\.csv: unsupported file type"),
    (lambda p: (_write(p / "a.xml", MEDLINE_XML), _write(p / "b.txt", "t\n"), p)[-1],
     r"holds both XML and \.txt/\.md files"),
    (lambda p: (_write(p / "README", "x"), p)[-1], r"no corpus\.jsonl\[\.gz\], \.xml\[\.gz\], \.txt or \.md files"),
])
def test_unsupported_sources_are_refused(tmp_path, setup, match):
    with pytest.raises(DataError, match=match):
        read_source(setup(tmp_path))


def test_beir_sources_keep_the_readers_contract(tmp_path):
    lines = [json.dumps({"_id": "d1", "title": "T", "text": "one", "metadata": {"year": 2001}}), "{not json",
             json.dumps({"_id": "d1", "text": "again"}), json.dumps({"_id": "d2", "text": " "})]
    path = _write(tmp_path / "corpus.jsonl", "\n".join(lines) + "\n")
    assert detect_source(tmp_path) == detect_source(path) == "beir"
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: malformed record"):
        read_source(tmp_path)
    records, report = read_source(path, skip_bad=True)
    assert records == {"d1": {"title": "T", "text": "one", "metadata": {"year": 2001}}}
    assert isinstance(report, SourceReport) and report.kind == "BEIR jsonl"
    assert (report.read, report.skipped_empty, report.duplicate_ids) == (1, ["d2"], ["d1"])
    assert [p.split(": ", 1)[1] for p in report.skipped_bad] == [
        "malformed record (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        "duplicate _id 'd1'"]


def test_index_skip_bad_counts_and_reports(tmp_path, tiny_llama_dir):
    lines = [json.dumps({"_id": "d1", "text": "Statins prevent atrial fibrillation."}), "{broken",
             json.dumps({"_id": "d3", "title": "no text field"}), json.dumps({"_id": "d4", "text": "Asthma."})]
    corpus = _write(tmp_path / "c.jsonl", "\n".join(lines) + "\n")
    base = ["index", "--corpus", str(corpus), "--index", str(tmp_path / "idx"), "--model", str(tiny_llama_dir),
            "--no-progress"]
    code, out, err = _run_cli(base)
    assert code == 2 and f"bmrag index: error: {corpus}:2: malformed record" in err
    code, out, err = _run_cli([*base, "--skip-bad"])
    assert code == 0, err
    assert "Indexed 2 documents (2 passages)" in out and "docs/s" in out
    assert "Sources: 2 documents read from 1 file (BEIR jsonl); 0 empty skipped; 2 malformed skipped;" in out
    assert f"malformed: {corpus}:2: malformed record" in out
    assert f"malformed: {corpus}:3: missing field 'text'" in out


# ------------------------------------------------------------------ XML -> Chroma -> filters of the chain
@pytest.fixture(scope="module")
def xml_index(tmp_path_factory):
    """The MEDLINE fixture indexed with ``bmrag index`` and all-MiniLM-L6-v2 (the offline default)."""
    root = tmp_path_factory.mktemp("xml_index")
    corpus = _write(root / "pubmed.xml", MEDLINE_XML)
    code, out, err = _run_cli(["index", "--corpus", str(corpus), "--index", str(root / "idx"), "--no-progress"])
    assert code == 0, err
    return root / "idx", out


def test_index_xml_and_filter_by_pub_type_and_year(xml_index):
    from bmrag.index.open import load_embedding
    from bmrag.index.store import open_store

    index_dir, out = xml_index
    embed_model = load_embedding("all-MiniLM-L6-v2")

    def _retrieve(index_dir: Path, question: str, filters: MetadataFilters | None) -> list:
        store = open_store(index_dir, embed_model, create=False)
        try:
            retriever = VectorStoreIndex.from_vector_store(store, embed_model=embed_model).as_retriever(
                similarity_top_k=5, filters=filters)
            return retriever.retrieve(question)
        finally:
            store.close()

    assert f"Corpus: {index_dir.parent / 'pubmed.xml'} (PubMed XML) (3 documents)" in out
    assert "Indexed 3 documents (3 passages)" in out
    assert "Sources: 3 documents read from 1 file (PubMed XML); 1 empty skipped; 0 malformed skipped" in out
    question = "Do statins prevent atrial fibrillation after heart surgery?"

    def ids(filters):
        return [hit.node.metadata["doc_id"] for hit in _retrieve(index_dir, question, filters)]

    assert sorted(ids(None)) == ["10000002", "10000003", "21881325"]
    assert ids(build_filters(pub_types=["rct"])) == ["21881325"]
    assert ids(build_filters(pub_types=["systematic-review", "meta-analysis"])) == ["10000002"]
    assert ids(build_filters(year_min=1990, year_max=2000)) == ["10000002"]
    assert ids(build_filters(year_max=1980, pub_types=["guideline"])) == ["10000003"]
    assert ids(build_filters(year_min=2012)) == []
    # The 0/1 flags work as LlamaIndex filters too (it rejects bool filter values, hence ints).
    flag = MetadataFilters(filters=[MetadataFilter(key="is_rct", operator=FilterOperator.EQ, value=1)])
    hits = _retrieve(index_dir, question, flag)
    assert [h.node.metadata["doc_id"] for h in hits] == ["21881325"]
    meta = hits[0].node.metadata
    assert meta["pmid"] == "21881325" and meta["year"] == 2011 and meta["mesh_terms"].startswith("Atrial Fibrillation")
    assert meta["title"].startswith("Preoperative statin therapy")


# ------------------------------------------------------------------------------- kill -9 and resume
def _chroma_count(index_dir: Path) -> int | None:
    client = chromadb.PersistentClient(path=str(index_dir), settings=Settings(anonymized_telemetry=False))
    try:
        return client.get_collection("bmrag").count()
    except Exception:  # the collection does not exist yet
        return None
    finally:
        client.close()


N_DOCS = 1600


def test_sigkill_mid_index_then_rerun_gives_the_clean_index(tmp_path, tiny_llama_dir):
    """`bmrag index` killed with SIGKILL after some batches were written; a re-run completes it exactly.

    1,600 one-chunk documents are written in 4 upserts of <= 512 nodes (LlamaIndex's insert batch); the test
    waits until Chroma (read from this process) holds at least one batch, kills the indexer, and checks
    that the re-run adds only what is missing: the final ids are exactly those of a clean run, each once.
    """
    from bmrag.index.build import corpus_to_nodes
    from bmrag.index.open import load_embedding

    words = ("patients trial asthma statin fibrillation randomized cohort dose placebo outcome mortality risk "
             "insulin diabetes blood pressure therapy").split()
    corpus = {f"d{i}": {"title": f"Doc {i}", "text": " ".join(words[(i * 7 + j) % len(words)] for j in range(12)),
                        "metadata": {"year": 1990 + i % 30}} for i in range(N_DOCS)}
    path = _write(tmp_path / "corpus.jsonl", "".join(json.dumps({"_id": k, **v}) + "\n" for k, v in corpus.items()))
    # What a clean run writes: every node id of the corpus (index_nodes adds exactly these).
    clean_ids = {n.node_id for n in corpus_to_nodes(corpus, load_embedding(str(tiny_llama_dir)).encoder)}
    assert len(clean_ids) == N_DOCS

    index_dir = tmp_path / "idx"
    cmd = [sys.executable, "-m", "bmrag.cli", "index", "--corpus", str(path), "--index", str(index_dir),
           "--model", str(tiny_llama_dir), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: ~5x faster on shared cores, and steadier timing
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # "Index: ..." is printed just before the collection is opened; polling earlier could race its creation.
        for line in proc.stdout:
            if line.startswith("Index:"):
                break
        seen = None
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            if (index_dir / "chroma.sqlite3").exists():
                seen = _chroma_count(index_dir)
                if seen:
                    break
        assert proc.poll() is None, f"the indexer finished before it could be killed:\n{proc.stdout.read()}"
        assert seen, "no batch was written within 120 s"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_count = _chroma_count(index_dir)
    # LlamaIndex upserts 512 nodes at a time, each upsert one SQLite transaction: never a partial batch.
    assert killed_count is not None and 0 < killed_count < N_DOCS and killed_count % 512 == 0, killed_count

    # The re-run: in this process (its imports are loaded: a second interpreter start costs ~10 s here).
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess: on shared cores one thread is several times faster
    try:
        code, out, err = _run_cli(cmd[3:])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err[-2000:]
    assert f"Indexed {N_DOCS - killed_count} documents ({N_DOCS - killed_count} passages)" in out
    assert f"{killed_count} passages were already stored" in out

    client = chromadb.PersistentClient(path=str(index_dir), settings=Settings(anonymized_telemetry=False))
    try:
        collection = client.get_collection("bmrag")
        stored = collection.get(include=["embeddings"])
        assert collection.count() == len(clean_ids)
        assert len(stored["ids"]) == len(set(stored["ids"])) == len(clean_ids)
        assert set(stored["ids"]) == clean_ids
        assert all(len(vector) == len(stored["embeddings"][0]) for vector in stored["embeddings"])
        # The reopened vector index answers queries (a damaged index would raise here).
        result = collection.query(query_embeddings=[stored["embeddings"][0]], n_results=10, include=[])
        assert len(result["ids"][0]) == 10
    finally:
        client.close()
