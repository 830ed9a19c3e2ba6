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
def test_demo_on_the_real_model(capsys, real):
    assert main(["demo", "--blocks", "1", "--block-size", "128"]) == 0
    out = capsys.readouterr().out
    assert "llama, 30 layers, hidden 576, 134.5M parameters" in out
    for task in ("prose", "code", "arithmetic"):
        assert f"  {task}" in out
    assert "answer" in out


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
