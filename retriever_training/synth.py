"""Synthetic training groups, E5-Mistral style, from any OpenAI-compatible chat endpoint (e.g. vLLM).

Two prompts, as in E5-Mistral (Wang et al. 2024) and BMRetriever's Stage II:

1. **Brainstorm**: the LLM lists biomedical retrieval tasks (``rounds`` requests, tasks de-duplicated,
   at most ``max_tasks`` kept).
2. **Generate**: for each task, the LLM writes one JSON example
   ``{"user_query", "positive_document", "hard_negative_document"}``.

Filters (each counted in :class:`SynthReport`): unparsable output, missing/empty fields, lengths
outside the limits, query equal to a document, positive equal to the negative, duplicate queries.
The task description becomes the group's instruction (E5-Mistral trains with the generated task as
the instruction).

Only the endpoint the caller passes (``api_base``) is contacted; there is no default service.
Network calls are retried (connection errors and HTTP 5xx/429), nothing else is.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from retriever_training.data import Group, normalize_text

logger = logging.getLogger(__name__)

BRAINSTORM_PROMPT = (
    "Brainstorm a list of {n} potentially useful text retrieval tasks in the biomedical and clinical domain "
    "(for example literature search, clinical question answering, drug information, patient questions).\n"
    "Here are a few examples for your reference:\n"
    "- Given a clinical question, retrieve PubMed abstracts that answer it\n"
    "- Given a drug name, retrieve passages describing its adverse effects\n"
    "Please adhere to the following guidelines:\n"
    "- Specify what the query is, and what the desired documents are.\n"
    "- Each retrieval task should cover a wide range of queries, and should not be too specific.\n"
    "Your output must always be a JSON list of strings only, with each string one task description. "
    "Do not explain yourself or output anything else. Be creative!"
)

EXAMPLE_PROMPT = (
    "You have been assigned a retrieval task: {task}\n"
    "Your mission is to write one text retrieval example for this task in JSON format. The JSON object must "
    "contain the following keys:\n"
    '- "user_query": a string, a random user search query specified by the retrieval task.\n'
    '- "positive_document": a string, a relevant document for the user query.\n'
    '- "hard_negative_document": a string, a hard negative document that only appears relevant to the query.\n'
    "Please adhere to the following guidelines:\n"
    "- The \"user_query\" should be {query_type}, {query_length}, {clarity}, and diverse in topic.\n"
    "- All documents must be created independent of the query. Avoid copying the query verbatim. It's acceptable "
    "if some parts of the \"positive_document\" are not topically related to the query.\n"
    "- All documents should be at least {num_words} words long.\n"
    "- The \"hard_negative_document\" contains some useful information, but it should be less useful or "
    "comprehensive compared to the \"positive_document\".\n"
    "- Both the query and documents should be in English and written at a {difficulty} level.\n"
    "- Do not provide any explanation in any document on why it is relevant or not relevant to the query.\n"
    "Your output must always be a JSON object only, do not explain yourself or output anything else. Be creative!"
)

# E5-Mistral samples these placeholders per example for diversity.
QUERY_TYPES = ("extremely long-tail", "long-tail", "common")
QUERY_LENGTHS = ("less than 5 words", "5 to 15 words", "at least 10 words")
CLARITY = ("clear", "understandable with some effort", "ambiguous")
NUM_WORDS = (50, 100, 200)
DIFFICULTY = ("high school", "college", "PhD")


class EndpointError(RuntimeError):
    """The configured endpoint failed or answered something that is not an OpenAI chat completion."""


@dataclass
class ChatClient:
    """Minimal OpenAI-compatible ``/chat/completions`` client (standard library only).

    Attributes:
        api_base: Base URL including ``/v1`` (e.g. ``http://127.0.0.1:8000/v1``). Required; never guessed.
        model: Served model name.
        api_key: Sent as a bearer token (vLLM accepts any value, e.g. ``"EMPTY"``).
        timeout: Seconds per request.
        retries: Extra attempts on connection errors and HTTP 429/5xx.
        backoff: Seconds before the first retry (doubles each time).
    """

    api_base: str
    model: str
    api_key: str = "EMPTY"
    timeout: float = 120.0
    retries: int = 2
    backoff: float = 1.0
    requests_made: int = 0

    def __post_init__(self) -> None:
        if not self.api_base or not self.api_base.startswith(("http://", "https://")):
            raise ValueError(f"api_base must be an http(s) URL of an OpenAI-compatible server, got {self.api_base!r}")
        if not self.model:
            raise ValueError("model (the served model name) is required")

    def chat(self, prompt: str, *, temperature: float = 1.0, max_tokens: int = 1024, seed: int | None = None) -> str:
        """Send one user message; return the assistant text."""
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                                "temperature": temperature, "max_tokens": max_tokens}
        if seed is not None:
            body["seed"] = seed
        url = self.api_base.rstrip("/") + "/chat/completions"
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"}
        delay = self.backoff
        for attempt in range(self.retries + 1):
            self.requests_made += 1
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                break
            except urllib.error.HTTPError as err:
                detail = err.read().decode("utf-8", "replace")[:300]
                if err.code in (429, 500, 502, 503, 504) and attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise EndpointError(f"{url}: HTTP {err.code}: {detail}") from err
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise EndpointError(f"{url}: cannot reach the server ({err}); is it running?") from err
            except json.JSONDecodeError as err:
                raise EndpointError(f"{url}: response is not JSON ({err})") from err
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as err:
            raise EndpointError(f"{url}: not an OpenAI chat completion: {str(payload)[:300]}") from err


def extract_json(text: str) -> Any:
    """Parse the first JSON value in an LLM answer (tolerates code fences and text around it).

    Raises:
        ValueError: When no JSON value can be parsed.
    """
    cleaned = re.sub(r"```(?:json)?", "", text).strip()
    decoder = json.JSONDecoder()
    for i, char in enumerate(cleaned):
        if char in "[{":
            try:
                return decoder.raw_decode(cleaned[i:])[0]
            except json.JSONDecodeError:
                continue
    raise ValueError(f"no JSON found in {text[:120]!r}")


@dataclass
class SynthFilters:
    """Limits an example must meet (words are whitespace-separated tokens)."""

    query_words: tuple[int, int] = (2, 80)
    document_words: tuple[int, int] = (15, 600)
    task_words: tuple[int, int] = (4, 40)


@dataclass
class SynthReport:
    """What the generator asked for and what each filter removed."""

    requests: int = 0
    tasks_proposed: int = 0
    tasks_kept: int = 0
    tasks_duplicate: int = 0
    tasks_bad: int = 0
    examples_kept: int = 0
    unparsable: int = 0
    missing_fields: int = 0
    bad_length: int = 0
    query_equals_document: int = 0
    positive_equals_negative: int = 0
    duplicate_query: int = 0
    endpoint_errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.requests} requests; tasks {self.tasks_kept} kept of {self.tasks_proposed} proposed "
                f"({self.tasks_duplicate} duplicate, {self.tasks_bad} malformed); examples {self.examples_kept} kept; "
                f"removed: {self.unparsable} unparsable, {self.missing_fields} missing fields, {self.bad_length} "
                f"length, {self.query_equals_document} query=document, {self.positive_equals_negative} "
                f"positive=negative, {self.duplicate_query} duplicate queries; "
                f"{len(self.endpoint_errors)} endpoint errors")


def _words(text: str) -> int:
    return len(text.split())


def brainstorm_tasks(client: ChatClient, *, rounds: int = 4, per_round: int = 20, max_tasks: int = 200,
                     filters: SynthFilters = SynthFilters(), report: SynthReport | None = None,
                     seed: int = 0) -> list[str]:
    """Ask the LLM for biomedical retrieval tasks ``rounds`` times; return de-duplicated task descriptions."""
    report = report if report is not None else SynthReport()
    tasks: list[str] = []
    seen: set[str] = set()
    for r in range(rounds):
        before = client.requests_made
        answer = client.chat(BRAINSTORM_PROMPT.format(n=per_round), seed=seed + r)
        report.requests += client.requests_made - before
        try:
            proposed = extract_json(answer)
        except ValueError:
            report.unparsable += 1
            continue
        if not isinstance(proposed, list):
            report.unparsable += 1
            continue
        for task in proposed:
            report.tasks_proposed += 1
            if not isinstance(task, str) or not (filters.task_words[0] <= _words(task) <= filters.task_words[1]):
                report.tasks_bad += 1
                continue
            key = normalize_text(task)
            if key in seen:
                report.tasks_duplicate += 1
                continue
            seen.add(key)
            tasks.append(task.strip())
        if len(tasks) >= max_tasks:
            break
    tasks = tasks[:max_tasks]
    report.tasks_kept = len(tasks)
    return tasks


def generate_examples(client: ChatClient, tasks: Sequence[str], *, per_task: int = 1, seed: int = 0,
                      filters: SynthFilters = SynthFilters(), report: SynthReport | None = None,
                      model_name: str | None = None) -> list[Group]:
    """Write ``per_task`` (query, positive, hard negative) examples per task; filtered, de-duplicated groups."""
    import random

    report = report if report is not None else SynthReport()
    rng = random.Random(seed)
    groups: list[Group] = []
    seen: set[str] = set()
    for t_index, task in enumerate(tasks):
        for k in range(per_task):
            prompt = EXAMPLE_PROMPT.format(task=task, query_type=rng.choice(QUERY_TYPES),
                                           query_length=rng.choice(QUERY_LENGTHS), clarity=rng.choice(CLARITY),
                                           num_words=rng.choice(NUM_WORDS), difficulty=rng.choice(DIFFICULTY))
            before = client.requests_made
            try:
                answer = client.chat(prompt, seed=seed + t_index * 1000 + k)
            except EndpointError as err:
                report.endpoint_errors.append(str(err))
                continue
            finally:
                report.requests += client.requests_made - before
            group = _check_example(answer, task, filters, report, seen)
            if group is not None:
                group.source = f"synth:{model_name or client.model}"
                group.id = f"synth:{t_index}:{k}"
                groups.append(group)
    report.examples_kept = len(groups)
    return groups


def _check_example(answer: str, task: str, filters: SynthFilters, report: SynthReport,
                   seen: set[str]) -> Group | None:
    try:
        example = extract_json(answer)
    except ValueError:
        report.unparsable += 1
        return None
    if not isinstance(example, dict):
        report.unparsable += 1
        return None
    fields = ("user_query", "positive_document", "hard_negative_document")
    values = [example.get(f) for f in fields]
    if not all(isinstance(v, str) and v.strip() for v in values):
        report.missing_fields += 1
        return None
    query, positive, negative = (v.strip() for v in values)
    if not (filters.query_words[0] <= _words(query) <= filters.query_words[1]) or not all(
            filters.document_words[0] <= _words(d) <= filters.document_words[1] for d in (positive, negative)):
        report.bad_length += 1
        return None
    q_key, p_key, n_key = normalize_text(query), normalize_text(positive), normalize_text(negative)
    if q_key in (p_key, n_key):
        report.query_equals_document += 1
        return None
    if p_key == n_key:
        report.positive_equals_negative += 1
        return None
    if q_key in seen:
        report.duplicate_query += 1
        return None
    seen.add(q_key)
    return Group(query=query, positives=[positive], negatives=[negative], instruction=task, task="synthetic")
