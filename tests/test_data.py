"""Tasks: deterministic, disjoint splits; blocks with labels and masks; clear errors."""
from __future__ import annotations

import pytest
import torch

from layerq_nb import data, load_task
from layerq_nb.data import IGNORE


@pytest.mark.parametrize("task", ["prose", "code", "arithmetic"])
def test_blocks_shape_and_determinism(tiny, task):
    _, tok = tiny
    a = load_task(task, tok, split="validation", n_blocks=3, block_size=64, seed=1)
    b = load_task(task, tok, split="validation", n_blocks=3, block_size=64, seed=1)
    assert a.input_ids.shape == (3, 64) and a.labels.shape == (3, 64) and a.attention_mask.shape == (3, 64)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    longer = load_task(task, tok, split="validation", n_blocks=5, block_size=64, seed=1)
    assert torch.equal(longer.input_ids[:3], a.input_ids)          # a smaller n_blocks is a prefix
    other = load_task(task, tok, split="validation", n_blocks=3, block_size=64, seed=2)
    assert not torch.equal(other.input_ids, a.input_ids)           # the seed reorders documents


@pytest.mark.parametrize("task", ["prose", "code", "arithmetic"])
def test_splits_are_disjoint(task):
    texts = {split: {"".join(t for t, _ in doc) for doc in data.task_documents(task, split)} for split in data.SPLITS}
    if task == "prose":   # documents are per-topic bundles of paragraphs: compare paragraphs
        texts = {s: {p.strip() for doc in docs for p in doc.split("\n\n")} for s, docs in texts.items()}
    assert all(texts[s] for s in data.SPLITS)
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]
    assert not texts["validation"] & texts["test"]


def test_prose_is_the_python_documentation(tiny):
    _, tok = tiny
    blocks = load_task("prose", tok, split="train", n_blocks=2, block_size=256)
    text = tok.decode(blocks.input_ids.flatten())
    assert sum(c.isalpha() for c in text) > 0.5 * len(text)
    assert blocks.n_targets == 2 * 255                      # prose trains on every next token


def test_arithmetic_trains_on_answers_only(tiny):
    _, tok = tiny
    blocks = load_task("arithmetic", tok, split="test", n_blocks=2, block_size=128)
    ids, labels = blocks.input_ids[0], blocks.labels[0]
    trained = tok.decode(ids[labels != IGNORE])
    prompts = tok.decode(ids[labels == IGNORE])
    assert "=" in prompts and "=" not in trained
    line = tok.decode(ids).split("\n")[1]                   # a complete problem: "a op b = c"
    lhs, rhs = line.split(" = ")
    assert eval(lhs) == int(rhs)                            # the generated answers are right


def test_hf_dataset_path(tiny, monkeypatch):
    import datasets
    _, tok = tiny
    fake = datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"id": list(range(400)), "text": [f"sentence number {i} of a small corpus." for i in range(400)]})})
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None: fake)
    train = load_task("hf:someone/corpus", tok, split="train", n_blocks=4, block_size=32)
    test = load_task("hf:someone/corpus", tok, split="test", n_blocks=1, block_size=32)
    assert train.input_ids.shape == (4, 32) and test.task == "hf:someone/corpus"


def test_hf_offline_error_names_the_builtins(tiny, monkeypatch):
    import datasets
    _, tok = tiny

    def offline(*a, **k):
        raise ConnectionError("no route to host")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="Offline\\? Use a built-in task: prose, code or arithmetic"):
        load_task("hf:wikitext:wikitext-2-raw-v1", tok)


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="poetry"), "unknown task 'poetry': use one of prose, code, arithmetic"),
    (dict(name="prose", split="dev"), "unknown split 'dev'"),
    (dict(name="prose", n_blocks=100_000), r"has text for only \d+ blocks of 256 tokens; ask for n_blocks <= \d+"),
    (dict(name="prose", block_size=4096), "block_size 4096 exceeds the model's context of 512"),
    (dict(name="prose", n_blocks=0), "n_blocks must be >= 1"),
])
def test_bad_task_input(tiny, kwargs, message):
    _, tok = tiny
    with pytest.raises(ValueError, match=message):
        load_task(tokenizer=tok, **kwargs)
