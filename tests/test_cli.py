"""The `layerq` command: help, doctor, demo on the real model, one-line errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from layerq_nb.cli import main


def test_help_reads_well():
    out = subprocess.run([sys.executable, "-m", "layerq_nb.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "demo" in out.stdout and "doctor" in out.stdout and "examples:" in out.stdout


def test_choices_are_the_core_constants():
    """The command line names no curvature, damping mode, split, method or map of its own."""
    from layerq_nb import curvature, data, pruning, scoring
    from layerq_nb.cli import build_parser
    commands = build_parser()._subparsers._group_actions[0].choices
    choices = {(name, action.dest): tuple(action.choices) for name, sub in commands.items()
               for action in sub._actions if action.choices}
    assert choices[("score", "curvature")] == curvature.CURVATURES
    assert choices[("score", "damping_mode")] == curvature.DAMPING_MODES
    assert choices[("score", "split")] == data.SPLITS
    assert choices[("score", "method")] == scoring.METHODS
    assert choices[("score", "fisher")] == scoring.FISHERS and choices[("score", "granularity")] == scoring.GRANULARITIES
    assert choices[("demo", "curvature")] == scoring.FACTORED
    assert choices[("prune", "method")] == pruning.PRUNE_METHODS
    assert commands["demo"].get_default("tasks") == list(data.TASKS)
    assert all(spec in commands["prune"].format_help().replace("\n", " ").replace(" ", "") for spec in pruning.MAP_SPECS)


def test_doctor_reports_versions(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    import torch
    assert torch.__version__ in out and "smollm2-135m" in out and "device" in out


def test_bad_input_is_one_line_without_traceback(capsys):
    assert main(["demo", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "unknown model 'no-such-model'" in err


def test_bad_task_is_one_line(capsys, real):
    assert main(["demo", "--tasks", "poetry", "--blocks", "1"]) == 2
    assert "unknown task 'poetry'" in capsys.readouterr().err


@pytest.mark.real_model
def test_demo_runs_the_pipeline_on_the_real_model(capsys, real):
    """One small run (--json); the text view renders the same report."""
    import json

    from layerq_nb.cli import _print_demo
    assert main(["demo", "--blocks", "1", "--score-blocks", "1", "--block-size", "32", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "layerq demo" in captured.err            # progress goes to the terminal, not into the JSON
    assert report["model"]["layers"] == 30 and report["model"]["parameters"] == 134_515_008
    assert [row["task"] for row in report["perplexity"]["rows"]] == ["prose", "code", "arithmetic"]
    for task in ("prose", "arithmetic"):
        q = report["scores"]["q"][task]
        assert len(q) == 30 and sum(q) == pytest.approx(1.0) and min(q) > 0
    assert report["scores"]["q"]["prose"] != report["scores"]["q"]["arithmetic"]
    a = report["allocation"]
    assert a["kkt_residual"] < 1e-6 and a["cvxpy_gap"] < 1e-4 and a["parameters"] <= a["budget"]
    b = report["pruning"]
    assert len(b["map"]) == 30 and b["achieved"]["mdl"] == pytest.approx(0.6, abs=0.01)
    assert b["uniform"] > b["dense"] and b["mdl"] > b["dense"]
    assert b["weights_restored"] is True
    _print_demo(report)
    out = capsys.readouterr().out
    assert "llama, 30 decoder layers, hidden 576, 134.5M parameters" in out
    assert "program A" in out and "program B" in out and "layerq lab" in out
    assert out.count("█") > 30 * 2                   # the bar chart, two bars per layer


def test_the_demo_checksum_sees_one_changed_weight(tiny):
    import torch

    from layerq_nb.pruning import weight_fingerprint
    model, _ = tiny
    before = weight_fingerprint(model)
    weight = next(model.parameters())
    with torch.no_grad():
        old = weight.view(-1)[0].item()
        weight.view(-1)[0] = old + 1e-3
        changed = weight_fingerprint(model)
        weight.view(-1)[0] = old
    assert changed != before and weight_fingerprint(model) == before


@pytest.mark.real_model
def test_prune_on_the_real_model(capsys, real, tmp_path):
    import json
    out_file = tmp_path / "prune.json"
    assert main(["prune", "--map", "owl", "--method", "magnitude", "--sparsity", "0.3", "--blocks", "2",
                 "--eval-blocks", "1", "--block-size", "64", "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "model.layers.29" in out and "global sparsity 0.3000" in out
    result = json.loads(out_file.read_text())
    assert result["perplexity"] > result["dense_perplexity"] > 1 and len(result["per_layer"]) == 30


def test_prune_rejects_an_unknown_map(capsys, real):
    assert main(["prune", "--map", "random", "--blocks", "1", "--eval-blocks", "1", "--block-size", "32"]) == 2
    assert "unknown map 'random'" in capsys.readouterr().err


def test_allocate_on_the_tiny_model(capsys):
    assert main(["allocate", "--model", "tiny-llama", "--blocks", "2", "--block-size", "32", "--rank", "2",
                 "--train", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "budget 3,072 LoRA parameters over 3 layers" in out and out.count("validation loss") == 2


def test_course_commands_are_part_of_layerq(capsys, tmp_path):
    from layerq_nb.cli import main
    assert main(["course", "build", str(tmp_path / "out"), "--notebooks", "99"]) == 2
    assert "no tutorial 99" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()                       # refused before anything is written
    with pytest.raises(SystemExit):
        main(["course", "--help"])
    assert "build|grade|render" in capsys.readouterr().out
