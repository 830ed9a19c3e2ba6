"""Malformed blocks fail early with one clear error (data.Blocks, data.check_blocks), not deep inside torch."""
from __future__ import annotations

import pytest
import torch

from layerq_nb import ablation, adapt, baselines, curvature, layer_influence, load_task, mean_loss, perplexity, score
from layerq_nb.data import IGNORE, Blocks, check_blocks
from layerq_nb.pruning import pruned
from layerq_nb.tape import GradientSum, run_tape

OTHER_MODEL = "tokenised for another model"


@pytest.fixture(scope="module")
def blocks(tiny):
    return load_task("prose", tiny[1], split="train", n_blocks=2, block_size=16)


def remade(blocks, **fields):
    parts = dict(input_ids=blocks.input_ids, labels=blocks.labels, attention_mask=blocks.attention_mask,
                 task=blocks.task, split=blocks.split)
    return Blocks(**{**parts, **fields})


def out_of_vocab(model, blocks):
    """The same text as ids of a larger vocabulary: what blocks tokenised for another model look like."""
    ids = blocks.input_ids + model.get_input_embeddings().num_embeddings
    return remade(blocks, input_ids=ids, labels=ids.clone())


# every entry point that runs the model over blocks: (name, call(model, blocks))
ENTRY_POINTS = [
    ("perplexity", lambda m, b: perplexity(m, b, progress=False)),
    ("mean_loss", lambda m, b: mean_loss(m, b, progress=False)),
    ("score", lambda m, b: score(m, b, progress=False)),
    ("layer_influence train", lambda m, b: layer_influence(m, b, b, progress=False)),
    ("run_tape", lambda m, b: run_tape(m, b, [GradientSum()], progress=False)),
    ("cornerstone", lambda m, b: ablation.cornerstone(m, b)),
    ("layer_game", lambda m, b: ablation.layer_game(m, b, [0, 1])),
    ("block_influence", lambda m, b: baselines.block_influence(m, b)),
    ("input_norms", lambda m, b: baselines.input_norms(m, b)),
    ("ggn_vector_product", lambda m, b: curvature.ggn_vector_product(m, b, 0, {})),
    ("finetune", lambda m, b: adapt.finetune(m, b, b, steps=1, progress=False)),
]


@pytest.mark.parametrize("name, call", ENTRY_POINTS, ids=[n for n, _ in ENTRY_POINTS])
def test_ids_outside_the_vocabulary_are_refused_by_every_entry_point(tiny, blocks, name, call):
    model, _ = tiny
    with pytest.raises(ValueError, match=OTHER_MODEL):
        call(model, out_of_vocab(model, blocks))


# perplexity refused these before (tests/test_evaluate.py): the shared check now guards the others too
@pytest.mark.parametrize("name, call", ENTRY_POINTS[2:], ids=[n for n, _ in ENTRY_POINTS[2:]])
def test_blocks_past_the_context_are_refused_by_the_scoring_passes(tiny, blocks, name, call):
    model, tok = tiny
    ctx = model.config.max_position_embeddings        # 512; load_task refuses more, so pack two blocks into one
    two = load_task("prose", tok, split="train", n_blocks=2, block_size=ctx // 2 + 44)
    long = remade(two, input_ids=two.input_ids.reshape(1, -1), labels=two.labels.reshape(1, -1),
                  attention_mask=two.attention_mask.reshape(1, -1))
    with pytest.raises(ValueError, match=f"blocks of {long.block_size} tokens exceed the model's context of {ctx}"):
        call(model, long)


def test_validation_blocks_from_another_tokenizer_are_refused(tiny, blocks):
    model, _ = tiny
    with pytest.raises(ValueError, match=OTHER_MODEL):
        layer_influence(model, blocks, out_of_vocab(model, blocks), progress=False)


def test_negative_ids_and_labels_are_refused(tiny, blocks):
    model, _ = tiny
    with pytest.raises(ValueError, match=r"span \[-5, .*" + OTHER_MODEL):
        perplexity(model, remade(blocks, input_ids=blocks.input_ids.clone().fill_(-5)), progress=False)
    labels = blocks.labels.clone()
    labels[0, 3] = 10**6           # IGNORE (-100) is allowed; any other id must be a token
    with pytest.raises(ValueError, match=OTHER_MODEL):
        perplexity(model, remade(blocks, labels=labels), progress=False)


@pytest.mark.parametrize("value, shown", [([1, 2, 3], "got list"), (torch.ones(2, 16, dtype=torch.long),
                                          r"got Tensor of shape \(2, 16\)"), ("prose", "got str")])
def test_not_blocks_names_what_was_passed_and_how_to_make_blocks(tiny, value, shown):
    model, _ = tiny
    for call in (lambda: perplexity(model, value, progress=False),
                 lambda: run_tape(model, value, [GradientSum()], progress=False)):
        with pytest.raises(TypeError, match=shown + r".*load_task\(task, tokenizer"):
            call()


def test_swapped_model_and_blocks_say_so(tiny, blocks):
    model, _ = tiny
    with pytest.raises(TypeError, match=r"got LlamaForCausalLM \(model and blocks swapped\?\)"):
        perplexity(blocks, model, progress=False)


def test_score_of_not_blocks_names_what_was_passed(tiny, blocks):
    model, _ = tiny
    with pytest.raises(TypeError, match="got Tensor"):
        score(model, blocks.input_ids, progress=False)


def test_wanda_pruning_refuses_ids_outside_the_vocabulary(tiny, blocks):
    model, _ = tiny
    with pytest.raises(ValueError, match=OTHER_MODEL):
        with pruned(model, 0.5, "wanda", blocks=out_of_vocab(model, blocks), progress=False):
            pass


def test_float_ids_are_refused_where_blocks_are_made(blocks):
    with pytest.raises(TypeError, match=r"Blocks.input_ids must hold int64 token ids, got torch.float32"):
        remade(blocks, input_ids=blocks.input_ids.float())
    with pytest.raises(TypeError, match="Blocks.labels must hold int64"):
        remade(blocks, labels=blocks.labels.int())
    with pytest.raises(TypeError, match="2-d"):
        remade(blocks, input_ids=blocks.input_ids[0])


@pytest.mark.parametrize("field", ["labels", "attention_mask"])
def test_fields_of_another_shape_are_refused_where_blocks_are_made(blocks, field):
    with pytest.raises(ValueError, match=rf"Blocks.{field} must have the shape of input_ids \(2, 16\), got \(2, 7\)"):
        remade(blocks, **{field: getattr(blocks, field)[:, :7]})


def test_good_blocks_pass_unchanged(tiny, blocks):
    model, _ = tiny
    padded = remade(blocks, labels=blocks.labels.masked_fill(torch.arange(16) > 10, IGNORE))
    assert check_blocks(model, padded) is padded
    assert check_blocks(model, blocks.subset([1])).block_size == 16


def test_block_size_past_all_the_text_says_so(tiny, monkeypatch):
    _, tok = tiny
    monkeypatch.setattr(tok, "model_max_length", int(1e30))     # as the cached SmolLM2 tokenizer has
    with pytest.raises(ValueError, match=r"block_size 1000000 is larger than all the text of task 'arithmetic' "
                                         r"split 'test' \(\d+ tokens\): use a smaller block_size"):
        load_task("arithmetic", tok, split="test", n_blocks=1, block_size=10**6)
