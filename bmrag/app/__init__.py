"""The clinical QA web app: :mod:`~bmrag.app.config` (what it serves), :mod:`~bmrag.app.service` (no Gradio),
:mod:`~bmrag.app.render` (HTML), :mod:`~bmrag.app.streaming` (token streaming) and :mod:`~bmrag.app.gradio_app`
(the page and its launchers)."""
