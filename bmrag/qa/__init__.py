"""The QA chain: retrieve -> (rerank) -> numbered evidence -> answer -> checked citations.

Modules: :mod:`~bmrag.qa.chain` (orchestration only), :mod:`~bmrag.qa.evidence` (numbering and the weak-evidence
threshold), :mod:`~bmrag.qa.fusion` (hybrid BM25 + dense), :mod:`~bmrag.qa.filters` (metadata filters),
:mod:`~bmrag.qa.prompt` (the generator's prompt), :mod:`~bmrag.qa.citations` and :mod:`~bmrag.qa.attribution`
(checking an answer's citations and support), :mod:`~bmrag.qa.answer` (post-processing),
:mod:`~bmrag.qa.result` (:class:`~bmrag.qa.result.AskResult` and exit codes).
"""
