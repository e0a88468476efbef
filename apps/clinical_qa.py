"""Launch the bmrag clinical QA web app (Gradio) on this machine.

    python apps/clinical_qa.py                      # the demo index (~/.cache/bmrag/index/demo), local generator
    python apps/clinical_qa.py --index DIR --backend vllm --api-base http://127.0.0.1:8000/v1
    python apps/clinical_qa.py --smoke "What are the symptoms of asthma?"   # one answer, no server; exit 0 = answered

It binds 127.0.0.1 unless ``--host`` says otherwise, sends no analytics and does not contact the Hugging Face
Hub. A missing index is reported in the page with how to build one (``bmrag index``); ``bmrag demo`` also
builds the bundled sample index first. Everything here is bmrag's public API (``bmrag.app``, ``bmrag.options``).
"""

from __future__ import annotations

import argparse
import sys

from bmrag.app.gradio_app import run_from_args
from bmrag.index.sample import SAMPLE_QUESTIONS
from bmrag.loading import offline_environment
from bmrag.options import add_app_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bmrag clinical QA web app (Gradio)")
    add_app_arguments(parser, smoke_question=SAMPLE_QUESTIONS[0])
    args = parser.parse_args(argv)
    offline_environment()
    try:
        return run_from_args(args)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"clinical_qa: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
