"""Concurrency of the clinical QA app: N simultaneous gradio_client users on loopback, one question each.

Starts the real app (``apps/clinical_qa.py``) as a subprocess on 127.0.0.1 and a free port, waits for its URL,
then N threads each open their own ``gradio_client.Client`` and, released together by a barrier, call the
``/ask`` endpoint once. Records per user: the latency seen by the client (queue wait included), the chain's
own time for that answer, the answer status and any error. Writes ``evals/results/bench_demo.json`` and
``.md`` (p50/p95, errors, backend, queue settings, load average before and after).

    nice -n 19 python evals/bench_demo.py --users 20 --threads 1 [--index DIR] [--backend vllm --api-base URL]

The default index is the bundled sample built by ``bmrag index`` / ``bmrag demo`` (~/.cache/bmrag/index/demo).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bmrag.evaluation.report import portable
from bmrag.index.sample import SAMPLE_QUESTIONS

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = SAMPLE_QUESTIONS
OK = {"answered", "partially_supported", "abstained"}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(args: argparse.Namespace, port: int) -> tuple[subprocess.Popen, str, list[str]]:
    """Start apps/clinical_qa.py; return the process, its URL and the log lines so far."""
    cmd = [sys.executable, str(REPO / "apps" / "clinical_qa.py"), "--port", str(port), "--backend", args.backend]
    if args.index:
        cmd += ["--index", args.index]
    if args.api_base:
        cmd += ["--api-base", args.api_base]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    if args.max_new_tokens is not None:
        cmd += ["--max-new-tokens", str(args.max_new_tokens)]
    if args.concurrency is not None:
        cmd += ["--concurrency", str(args.concurrency)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    found: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip())
            match = re.search(r"running at (http://\S+)", line)
            if match:
                found.put(match.group(1))

    threading.Thread(target=pump, daemon=True).start()
    try:
        url = found.get(timeout=args.start_timeout)
    except queue.Empty:
        proc.kill()
        raise RuntimeError("the app did not print its URL in time:\n" + "\n".join(lines[-20:])) from None
    return proc, url, lines


def one_user(number: int, url: str, question: str, barrier: threading.Barrier, out: list[dict[str, Any]]) -> None:
    from gradio_client import Client

    record: dict[str, Any] = {"user": number, "question": question}
    try:
        client = Client(url, verbose=False)
    except Exception as err:  # noqa: BLE001 (recorded as this user's error)
        record["error"] = f"connect: {type(err).__name__}: {err}"
        barrier.abort()
        out.append(record)
        return
    barrier.wait()
    start = time.perf_counter()
    try:
        answer, _evidence, _message, details, _status = client.predict(question, 3, False, False, "", "", [],
                                                                       api_name="/ask")
        record["latency_s"] = time.perf_counter() - start
        record["status"] = details.get("status")
        record["chain_total_s"] = (details.get("timings") or {}).get("total")
        record["backend"] = (details.get("generator") or {}).get("backend")
        record["cited"] = [s["number"] for s in details.get("sources", [])]
        if record["status"] not in OK:
            record["error"] = f"status {record['status']}"
    except Exception as err:  # noqa: BLE001
        record["latency_s"] = time.perf_counter() - start
        record["error"] = f"{type(err).__name__}: {err}"
    finally:
        client.close()
    out.append(record)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20, help="simultaneous users (default 20)")
    parser.add_argument("--index", default=None, help="index dir (default: the demo index)")
    parser.add_argument("--backend", choices=["local", "vllm"], default="local")
    parser.add_argument("--api-base", default=None, help="vLLM URL (--backend vllm)")
    parser.add_argument("--threads", type=int, default=None, help="local generator torch threads")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=None, help="app --concurrency (default: app's)")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--out", default=str(REPO / "evals" / "results" / "bench_demo"),
                        help="output path without extension (.json and .md are written)")
    args = parser.parse_args(argv)
    niceness = os.nice(0)  # recorded as run: the CPU is often shared, and `nice` changes the figures
    command = (f"nice -n {niceness} " if niceness else "") + "python evals/bench_demo.py " + " ".join(
        argv if argv is not None else sys.argv[1:])

    load_before = os.getloadavg()
    port = free_port()
    started = time.perf_counter()
    proc, url, log = start_app(args, port)
    startup_s = time.perf_counter() - started
    status_line = next((line for line in log if line.startswith("Loading")), "")
    records: list[dict[str, Any]] = []
    try:
        barrier = threading.Barrier(args.users)
        threads = [threading.Thread(target=one_user, args=(i, url, QUESTIONS[i % len(QUESTIONS)], barrier, records))
                   for i in range(args.users)]
        wall = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - wall
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    load_after = os.getloadavg()

    records.sort(key=lambda r: r["user"])
    latencies = [r["latency_s"] for r in records if "latency_s" in r and "error" not in r]
    chain = [r["chain_total_s"] for r in records if r.get("chain_total_s") is not None]
    errors = [r for r in records if "error" in r]
    backends = sorted({r.get("backend") or "?" for r in records if "error" not in r})
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r.get("status"))] = statuses.get(str(r.get("status")), 0) + 1
    summary = {
        "users": args.users, "completed": len(records), "errors": len(errors),
        "latency_p50_s": round(percentile(latencies, 0.5), 2), "latency_p95_s": round(percentile(latencies, 0.95), 2),
        "latency_max_s": round(max(latencies), 2) if latencies else None,
        "chain_p50_s": round(percentile(chain, 0.5), 2), "chain_p95_s": round(percentile(chain, 0.95), 2),
        "wall_s": round(wall, 1), "app_startup_s": round(startup_s, 1), "statuses": statuses,
        "answers_with_citations": sum(1 for r in records if r.get("cited")),
        "backend": backends, "backend_requested": args.backend,
        "queue_concurrency": args.concurrency or (1 if args.backend == "local" else 8),
        "threads": args.threads, "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
    }
    result = {"benchmark": "bench_demo", "command": command, "url": url, "summary": summary,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "app_log_first_line": status_line, "records": records}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = portable(result)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    s = summary
    md = [
        "# Clinical QA app under concurrent users (`evals/bench_demo.py`)", "",
        f"Command: `{command}`", "",
        f"{s['users']} gradio_client users (threads) released together against the app on 127.0.0.1, one question "
        f"each (3 passages, no rerank, dense). Generator backend: {', '.join(s['backend'])}; Gradio queue "
        f"concurrency {s['queue_concurrency']} ("
        + ("answers are computed one after another with the local generator; the others wait in the queue)."
           if "local" in s["backend"] else "up to that many requests reach the vLLM server at once, which batches "
           "them; the rest wait in the queue).") + "", "",
        "| users | errors | p50 latency (s) | p95 latency (s) | max (s) | chain time per answer p50 / p95 (s) | "
        "wall (s) |",
        "|---|---|---|---|---|---|---|",
        f"| {s['users']} | {s['errors']} | {s['latency_p50_s']} | {s['latency_p95_s']} | {s['latency_max_s']} | "
        f"{s['chain_p50_s']} / {s['chain_p95_s']} | {s['wall_s']} |", "",
        f"Latency is what each user waited (queue + answer). Statuses: {s['statuses']}; answers citing a passage: "
        f"{s['answers_with_citations']} of {s['users']}.", "",
        f"Machine: {os.cpu_count()} CPU cores shared with other jobs; load average (1/5/15 min) "
        f"{s['load_average_before']} before, {s['load_average_after']} after. App start-up (index + models): "
        f"{s['app_startup_s']} s.",
    ]
    if errors:
        md += ["", "Errors:", *[f"- user {r['user']}: {r['error']}" for r in errors]]
    out.with_suffix(".md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
