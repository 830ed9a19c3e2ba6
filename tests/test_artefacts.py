"""What `layerq` hands back round-trips through the field's libraries: a pruned model folder through
transformers, an adapter configuration (and trained adapter) through peft, a score file through
`prune --scores` / `allocate --scores`, and a score file of another model is refused."""
from __future__ import annotations

import json

import pytest
import torch

from layerq_nb.artefacts import load_record, save_scores
from layerq_nb.cli import main
from layerq_nb.data import load_task
from layerq_nb.evaluate import perplexity
from layerq_nb.models import _tiny_llama, layers, load_model, weight_matrix
from layerq_nb.scores import LayerScores

TINY = ["--model", "tiny-llama", "--block-size", "32"]


def _zeros_per_layer(model) -> list[float]:
    return [sum(int((weight_matrix(m) == 0).sum()) for m in layer.linears.values()) / layer.n_params
            for layer in layers(model)]


def _check_pruned_folder(folder, out_file, task="prose"):
    """The folder loads with transformers alone, with the zeros and the perplexity that were reported."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    record, reported = load_record(folder), json.loads(out_file.read_text())
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert _zeros_per_layer(model) == pytest.approx(reported["per_layer"], abs=1e-6)
    assert record["per_layer"] == pytest.approx(reported["per_layer"], abs=1e-6)
    evaluation = record["evaluation"]
    blocks = load_task(task, tokenizer, split="test", n_blocks=evaluation["blocks"], block_size=evaluation["block_size"])
    assert perplexity(model, blocks, progress=False) == pytest.approx(reported["perplexity"], rel=1e-5)
    assert record["map"] == reported["map"] and record["method"] == reported["method"]
    assert record["calibration"]["task"] == task and record["calibration"]["blocks"] >= 1
    return model, record


def test_prune_save_round_trips_through_transformers(tmp_path, capsys):
    folder, out_file = tmp_path / "pruned", tmp_path / "prune.json"
    assert main(["prune", *TINY, "--map", "uniform", "--method", "wanda", "--sparsity", "0.5", "--blocks", "2",
                 "--eval-blocks", "2", "--out", str(out_file), "--save", str(folder)]) == 0
    assert "saved the pruned model" in capsys.readouterr().out
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    _, record = _check_pruned_folder(folder, out_file)
    assert record["global_sparsity"] == pytest.approx(0.5, abs=0.01)
    # the same folder can be written again (it is ours), a folder of other files cannot
    assert main(["prune", *TINY, "--map", "uniform", "--method", "magnitude", "--blocks", "1", "--eval-blocks", "1",
                 "--save", str(folder)]) == 0
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert main(["prune", *TINY, "--save", str(other)]) == 2
    assert "other files in it" in capsys.readouterr().err and (other / "notes.txt").read_text() == "keep me"


@pytest.mark.real_model
def test_prune_save_of_the_real_model_loads_offline(tmp_path, monkeypatch, real):
    folder, out_file = tmp_path / "smollm2-pruned", tmp_path / "prune.json"
    assert main(["prune", "--map", "uniform", "--method", "magnitude", "--sparsity", "0.3", "--blocks", "1",
                 "--eval-blocks", "1", "--block-size", "64", "--out", str(out_file), "--save", str(folder)]) == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, record = _check_pruned_folder(folder, out_file)
    assert len(layers(model)) == 30 and record["identity"]["layers"] == 30
    assert not hasattr(model.config, "quantization_config")


def test_score_file_feeds_prune_and_allocate_without_rescoring(tmp_path, capsys, monkeypatch):
    from peft import LoraConfig, get_peft_model
    scores_file, adapter = tmp_path / "scores.json", tmp_path / "adapter"
    assert main(["score", *TINY, "--blocks", "2", "--out", str(scores_file)]) == 0
    saved = LayerScores.load(scores_file)
    assert saved.metadata["identity"]["layers"] == 3 and saved.metadata["identity"]["model_type"] == "llama"

    import layerq_nb.influence
    import layerq_nb.pruning
    import layerq_nb.scoring

    def no_rescoring(*args, **kwargs):
        raise AssertionError("the scores were computed again")
    for module, name in ((layerq_nb.scoring, "score"), (layerq_nb.pruning, "map_functions"),
                         (layerq_nb.influence, "layer_influence")):
        monkeypatch.setattr(module, name, no_rescoring)
    out_file = tmp_path / "prune.json"
    assert main(["prune", *TINY, "--scores", str(scores_file), "--map", "mdl-zeta2", "--sparsity", "0.5",
                 "--blocks", "2", "--eval-blocks", "1", "--out", str(out_file)]) == 0
    result = json.loads(out_file.read_text())
    assert result["achieved"] == pytest.approx(0.5, abs=0.03) and len(set(result["target"])) > 1   # whole weights per row

    capsys.readouterr()
    assert main(["allocate", *TINY, "--scores", str(scores_file), "--rank", "3", "--save", str(adapter)]) == 0
    printed = capsys.readouterr().out
    record = load_record(adapter)
    config = LoraConfig.from_pretrained(adapter)
    assert config.rank_pattern and config.alpha_pattern
    model, _ = load_model("tiny-llama")
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == record["parameters"] and f"{record['parameters']:,}" in printed
    for k, names in record["modules"].items():
        for name in names:
            assert peft_model.base_model.model.get_submodule(name).lora_A["default"].out_features == \
                record["ranks"][int(k)]


def test_allocate_train_saves_the_trained_adapter(tmp_path, capsys):
    from peft import PeftModel
    scores_file, adapter = tmp_path / "scores.json", tmp_path / "adapter"
    model, _ = load_model("tiny-llama")
    save_scores(LayerScores("zeta2[kfac]", [1.0, 3.0, 2.0], tuple(layer.name for layer in layers(model))),
                model, scores_file)
    assert main(["allocate", *TINY, "--scores", str(scores_file), "--blocks", "2", "--train", "--steps", "2",
                 "--lr", "0.01", "--save", str(adapter)]) == 0
    assert (adapter / "adapter_model.safetensors").is_file()
    record = load_record(adapter)
    assert record["trained"]["steps"] == 2 and record["ranks"][1] >= record["ranks"][0]
    loaded = PeftModel.from_pretrained(load_model("tiny-llama")[0], adapter)
    lora_b = [p for n, p in loaded.named_parameters() if "lora_B" in n]
    assert lora_b and any(bool(p.abs().sum() > 0) for p in lora_b), "the trained B matrices were not saved"


@pytest.mark.parametrize("other, message", [
    (lambda: _tiny_llama(n_layers=2), "holds 2 layer scores, but tiny-llama .* has 3 layers"),
    (lambda: _tiny_llama(hidden_size=64), "belongs to another model"),
])
def test_a_score_file_of_another_model_is_refused(tmp_path, capsys, other, message):
    import re
    model, _ = other()
    scores_file = tmp_path / "scores.json"
    found = layers(model)
    save_scores(LayerScores("zeta2[kfac]", [1.0] * len(found), tuple(layer.name for layer in found)), model,
                scores_file)
    for command in (["prune", *TINY, "--blocks", "1", "--eval-blocks", "1"], ["allocate", *TINY, "--blocks", "1"]):
        assert main([*command, "--scores", str(scores_file)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and re.search(message, err), err


def test_prune_scores_need_a_map_that_uses_them(tmp_path, capsys):
    assert main(["prune", *TINY, "--map", "owl", "--scores", str(tmp_path / "none.json")]) == 2
    assert "uses no layer scores" in capsys.readouterr().err
    assert main(["prune", *TINY, "--scores", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err
