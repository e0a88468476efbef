"""Memory-mapped Arrow training data (``retriever_training/arrow_data.py``): the same groups, the same batches,
the same training run as the JSONL path; bad input named; nothing half-written."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from bmrag.index.readers import DataError
from retriever_training.arrow_data import ArrowGroupDataset, ArrowNoDuplicateBatchSampler, convert_to_arrow
from retriever_training.cli import main
from retriever_training.data import Group, GroupDataset, NoDuplicateBatchSampler, read_groups, write_groups

INSTRUCTION = "Given a claim, retrieve documents that support or refute the claim"
WORDS = "aspirin statin insulin tumour cytokine sepsis kidney liver neuron amyloid vitamin cohort trial".split()


def messy_groups(n: int, seed: int = 0) -> list[Group]:
    """String and {title, text} passages (empty titles too), shared positives and repeated queries (the sampler
    must defer them), groups without negatives, ids and positive_ids."""
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k)) + "."

    groups = []
    for i in range(n):
        positive = {"title": rng.choice(["", f"Doc {i}"]), "text": text(8)} if i % 2 else text(8)
        groups.append(Group(query=text(5) + f" q{i % 40}", positives=[positive], instruction=INSTRUCTION,
                            negatives=[text(8) for _ in range(i % 4)], task="scifact", source="synthetic",
                            id=f"g{i}", positive_ids=[f"d{i}"] if i % 3 else []))
    for i in range(0, n - 10, 10):  # shared positives and repeated queries: these may not share a batch
        for j in (1, 2, 3, 4):
            groups[i + j].positives.append(groups[i].positives[0])
        groups[i + 7].query = groups[i + 8].query = groups[i + 6].query
    return groups


def test_arrow_holds_the_same_groups_and_gives_the_same_batches(tmp_path):
    groups = messy_groups(300, seed=1)
    write_groups(tmp_path / "a.jsonl", groups[:180])
    write_groups(tmp_path / "b.jsonl", groups[180:])
    files = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    report = convert_to_arrow(files, tmp_path / "g.arrow", batch_rows=32, progress=False)
    assert report.groups == 300 and report.per_file == {str(files[0]): 180, str(files[1]): 120}
    deferred = []
    for min_negatives, limit in ((0, None), (1, None), (2, 100)):
        arrow = ArrowGroupDataset(tmp_path / "g.arrow", min_negatives=min_negatives)
        memory = GroupDataset([g for f in files for g in read_groups(f)], min_negatives=min_negatives)
        if limit:  # per-file limit over two Arrow files = read_groups(limit) per JSONL file
            convert_to_arrow([files[0]], tmp_path / "a.arrow", progress=False)
            convert_to_arrow([files[1]], tmp_path / "b.arrow", progress=False)
            arrow = ArrowGroupDataset([tmp_path / "a.arrow", tmp_path / "b.arrow"], min_negatives=min_negatives,
                                      limit_per_file=limit)
            memory = GroupDataset([g for f in files for g in read_groups(f, limit=limit)], min_negatives=min_negatives)
        assert len(arrow) == len(memory) and arrow.dropped_short == memory.dropped_short
        assert list(arrow) == memory.groups  # str vs {title, text} passages, empty titles, ids: all kept
        assert arrow[(3, 5)] == memory[(3, 5)]
        for seed, epoch, batch in ((0, 0, 8), (7, 2, 16)):
            a, b = ArrowNoDuplicateBatchSampler(arrow, batch, seed=seed), NoDuplicateBatchSampler(memory.groups,
                                                                                                 batch, seed=seed)
            a.set_epoch(epoch)
            b.set_epoch(epoch)
            assert list(a) == list(b) and len(a) == len(b)
            assert (a.deferred, a.unused) == (b.deferred, b.unused)
            deferred.append(a.deferred)
    assert min(deferred[:2]) > 0  # shared positives / repeated queries were deferred, the same way


def test_bad_line_is_named_and_nothing_is_half_written(tmp_path):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    write_groups(good, messy_groups(20))
    bad.write_text(good.read_text() + json.dumps({"query": "q", "positives": [{"text": 3}]}) + "\n")
    out = tmp_path / "train.arrow"
    convert_to_arrow([good], out, progress=False)
    before = out.read_bytes()
    with pytest.raises(DataError, match=r"bad.jsonl:21: positives\[0\]: a passage mapping needs string 'text'"):
        convert_to_arrow([bad], out, batch_rows=4, progress=False)
    assert out.read_bytes() == before and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(DataError, match=r"good.jsonl: not an Arrow file written by convert_to_arrow"):
        ArrowGroupDataset(good)
    with pytest.raises(DataError, match="no group has the 5 negatives"):
        ArrowGroupDataset(out, min_negatives=5)


def test_cli_trains_from_arrow_exactly_as_from_jsonl(tiny_llama_dir, tmp_path, capsys):
    data = tmp_path / "groups.jsonl"
    write_groups(data, [g for g in messy_groups(60, seed=2) if g.negatives])
    assert main(["arrow", str(data), "--out", str(tmp_path / "groups.arrow")]) == 0
    assert "wrote 45 groups" in capsys.readouterr().out
    config = tmp_path / "smoke.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_llama_dir}\ndtype: float32\nlora_r: 4\nlora_alpha: 8\nadapter_dtype: float32\n"
        "train_group_size: 2\npassage_max_length: 48\nper_device_train_batch_size: 4\nmax_steps: 3\n"
        "save_strategy: 'no'\nlogging_steps: 1\nlearning_rate: 0.001\ndisable_tqdm: true\nuse_cpu: true\n")
    runs = {}
    for name in ("jsonl", "arrow"):
        out = tmp_path / name
        argv = ["finetune", "--config", str(config), "--output_dir", str(out), "--train_files",
                str(tmp_path / f"groups.{name}")]
        assert main(argv) == 0
        runs[name] = (json.loads((out / "run.json").read_text()), load_file(str(out / "adapter_model.safetensors")))
    (run_j, weights_j), (run_a, weights_a) = runs["jsonl"], runs["arrow"]
    assert run_a["groups_used"] == run_j["groups_used"] == 45 and run_a["global_step"] == 3
    assert run_a["train_loss"] == pytest.approx(run_j["train_loss"], abs=1e-6)
    assert max(float((weights_a[k] - weights_j[k]).abs().max()) for k in weights_j) < 1e-6
    assert any(float(torch.linalg.norm(w)) > 0 for w in weights_a.values())
    assert main(["finetune", "--config", str(config), "--output_dir", str(tmp_path / "mixed"), "--train_files",
                 str(tmp_path / "groups.arrow"), str(data)]) == 2
    assert "train_files mixes .arrow and JSONL files" in capsys.readouterr().err
