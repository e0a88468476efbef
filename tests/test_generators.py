"""Generation backends: explicit selection, clear errors, a real down server, the embedded LocalLLM."""

from __future__ import annotations

import socket
import time

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole

from bmrag import generators, loading


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def llm():
    import torch

    # One thread: on a machine whose cores are busy with other work, two threads oversubscribe and run
    # ~10x slower (measured); the thread count is process-wide, so restore it afterwards.
    threads = torch.get_num_threads()
    yield generators.LocalLLM(max_new_tokens=24, threads=1)
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ backend selection
def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown generation backend 'gpu'; choose one of: local, vllm"):
        generators.load_generator("gpu")


def test_unknown_option_is_rejected_with_the_valid_names():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['temprature'\]; valid: model, api_base"):
        generators.load_generator("local", temprature=0.0)


def test_options_of_the_other_backend_are_rejected():
    with pytest.raises(ValueError, match="api_base applies to the vllm backend only"):
        generators.load_generator("local", api_base="http://127.0.0.1:8000/v1")
    with pytest.raises(ValueError, match="dtype applies to the local backend only"):
        generators.load_generator("vllm", dtype="float32")


def test_server_down_is_reported_quickly_with_the_url():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    start = time.perf_counter()
    with pytest.raises(generators.BackendUnavailable, match=f"no LLM server answered at {url} within 2 s") as err:
        generators.load_generator("vllm", api_base=url)
    assert time.perf_counter() - start < 3
    assert err.value.url == url
    assert "bmrag serve-llm" in str(err.value) and "--backend local" in str(err.value)


def test_health_check_needs_an_http_url():
    with pytest.raises(ValueError, match="api_base must be an http"):
        generators.check_server("127.0.0.1:8000")


def test_openai_like_without_the_health_check_fails_on_a_closed_port_too():
    # What the health check saves users from: the raw client error, after its own retries.
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model="m", api_base=f"http://127.0.0.1:{closed_port()}/v1", api_key="EMPTY",
                     is_chat_model=True, context_window=2048, max_retries=0, timeout=2.0)
    start = time.perf_counter()
    with pytest.raises(Exception, match="Connection error"):
        llm.chat([ChatMessage(role=MessageRole.USER, content="hi")])
    assert time.perf_counter() - start < 5


# ------------------------------------------------------------------------------------------- LocalLLM
def test_local_llm_rejects_unknown_kwargs():
    with pytest.raises(TypeError, match=r"LocalLLM got unknown keyword argument\(s\) 'max_tokens_new'.*; "
                                         r"valid: .*max_new_tokens"):
        generators.LocalLLM(max_tokens_new=5)


def test_local_llm_metadata_and_generation_kwargs(llm):
    meta = llm.metadata
    assert meta.model_name == "SmolLM2-135M-Instruct" and meta.is_chat_model
    assert meta.context_window == generators.DEFAULT_CONTEXT_WINDOW and meta.num_output == 24
    assert llm.class_name() == "bmrag_local_llm"
    with pytest.raises(TypeError, match="valid: max_new_tokens, max_tokens"):
        llm.complete("hi", temperature=0.7)


def test_local_llm_answers_a_real_question(llm):
    text = llm.complete("What is the capital of France? Answer in one word.").text
    assert "paris" in text.lower()


def test_chat_uses_the_chat_template_and_equals_complete_on_the_rendered_prompt(llm):
    messages = [ChatMessage(role=MessageRole.SYSTEM, content="Answer briefly."),
                ChatMessage(role=MessageRole.USER, content="Which organ produces insulin?")]
    prompt = llm.render(messages)
    assert prompt.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")
    chat_text = llm.chat(messages).message.content
    assert chat_text == llm.complete(prompt, formatted=True).text
    assert "pancrea" in chat_text.lower()


def test_streaming_yields_deltas_that_add_up_to_the_full_greedy_answer(llm):
    prompt = "Name one symptom of asthma."
    full = llm.complete(prompt).text
    chunks = list(llm.stream_complete(prompt))
    assert len(chunks) > 1
    assert "".join(c.delta for c in chunks).strip() == full
    assert chunks[-1].text.strip() == full


def test_generator_describes_what_runs(llm):
    gen = generators.Generator(llm=llm, backend="local", model=llm.model_name, endpoint=str(llm.path),
                             max_new_tokens=24, context_window=2048)
    assert gen.describe() == {"backend": "local", "model": "SmolLM2-135M-Instruct", "endpoint": str(llm.path),
                              "max_new_tokens": 24, "context_window": 2048, "decoding": "greedy",
                              "dtype": llm.dtype}
    assert llm.dtype == loading.default_dtype("cpu")
    text = "Aspirin irreversibly inhibits cyclooxygenase-1 in platelets."
    assert gen.count_tokens(gen.truncate(text, 5)) == 5


def test_generation_reports_tokens_and_whether_the_budget_cut_it(llm):
    gen = generators.Generator(llm=llm, backend="local", model=llm.model_name, endpoint=str(llm.path),
                             max_new_tokens=24, context_window=2048)
    cut = gen.generate([ChatMessage(role=MessageRole.USER, content="Write a long essay about the human heart.")])
    assert (cut.completion_tokens, cut.finish_reason) == (24, "length")
    short = gen.generate([ChatMessage(role=MessageRole.USER, content="What is the capital of France? One word.")])
    assert short.finish_reason == "stop" and 0 < short.completion_tokens < 24
    assert "paris" in short.text.lower()


def test_materialized_model_is_cached_safetensors(llm):
    path = loading.materialize_model("SmolLM2-135M-Instruct")
    assert path == llm.path
    assert (path / "model.safetensors").is_file() and (path / "chat_template.jinja").is_file()
    start = time.perf_counter()
    assert loading.materialize_model("SmolLM2-135M-Instruct") == path
    assert time.perf_counter() - start < 1  # reused, not converted again


@pytest.mark.slow
def test_converted_weights_equal_the_gguf_weights(llm):
    """The safetensors copy (what vLLM and LocalLLM load) holds exactly the dequantised GGUF weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from bmrag import models

    gguf = models.resolve_offline(models.lookup("SmolLM2-135M-Instruct"))
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).state_dict()
    converted = AutoModelForCausalLM.from_pretrained(llm.path, dtype=torch.float32).state_dict()
    assert reference.keys() == converted.keys()
    for name, tensor in reference.items():
        assert torch.equal(tensor, converted[name]), name
