"""Refusals the CLI owes before any model loads or long work starts: output paths probed for real (root
passes os.access everywhere), the LoRA budget against the model's minimum before scoring, --damping 0,
tutorial numbers and time limits of the course commands; errors name the option the user gave; doctor
checks the cache's CRC-32s, not just its sizes."""
from __future__ import annotations

import os
import shutil

import pytest

import layerq_nb
from layerq_nb import cli, models

TINY = ["--model", "tiny-llama"]


def _not_yet(*args, **kwargs):
    raise AssertionError("long work started before the arguments were checked")


@pytest.fixture
def nothing_loads(monkeypatch):
    # layerq_nb's lazy attribute first: read after models is patched, it would cache the stub for good
    monkeypatch.setattr(layerq_nb, "load_model", _not_yet, raising=False)
    monkeypatch.setattr(models, "load_model", _not_yet)


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:          # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    return code, err


def _one_refusal(code, err, *fragments):
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


# ----------------------------------------------------------------------------- output paths

@pytest.mark.parametrize("command", ["prune", "allocate"])
def test_save_where_the_filesystem_refuses_is_caught_even_when_os_access_says_yes(command, monkeypatch, capsys,
                                                                                   nothing_loads):
    monkeypatch.setattr(os, "access", lambda *a, **k: True)     # what root is told, /sys and /proc included
    code, err = _run([command, *TINY, "--save", "/proc/p"], capsys)      # /proc takes no new entries, even from root
    _one_refusal(code, err, "--save /proc/p", "cannot write in /proc", "choose another --save")
    assert "--out" not in err


def test_save_inside_a_file_says_it_is_a_file(tmp_path, capsys, nothing_loads):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for target in (afile / "p", afile / "deeper" / "p"):
        code, err = _run(["prune", *TINY, "--save", str(target)], capsys)
        _one_refusal(code, err, f"--save {target}", f"{afile} is a file, not a folder")
        assert "mkdir" not in err


def test_out_inside_a_file_says_it_is_a_file(tmp_path, capsys, nothing_loads):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, err = _run(["score", *TINY, "--out", str(afile / "deeper" / "scores.json")], capsys)
    _one_refusal(code, err, f"{afile} is a file, not a folder")
    assert "mkdir" not in err


@pytest.mark.parametrize("argv, failed, option", [
    (["prune", "--save", "{tmp}/pruned"], "{tmp}/.pruned.partial-1-abc/model.safetensors", "--save"),
    (["prune", "--out", "{tmp}/r.json", "--save", "/elsewhere/pruned"], "{tmp}/r.json", "--out"),
    (["course", "build", "{tmp}/course"], "{tmp}/course/instructor", "OUT"),
    (["course", "render", "{tmp}/site"], "{tmp}/site/notebooks", "OUT"),
])
def test_a_write_failure_names_the_option_given(argv, failed, option, tmp_path):
    args = cli.build_parser().parse_args([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = PermissionError(1, "Operation not permitted", failed.replace("{tmp}", str(tmp_path)))
    line = cli._one_line(err, args)
    assert line.endswith(f"choose another {option} (or fix the permissions)"), line


# ----------------------------------------------------------------------------- allocate: the budget

def test_allocate_budget_below_the_minimum_is_refused_before_data_or_scoring(monkeypatch, capsys):
    from layerq_nb import data, influence, scoring
    monkeypatch.setattr(data, "load_task", _not_yet)
    monkeypatch.setattr(scoring, "score", _not_yet)
    monkeypatch.setattr(influence, "layer_influence", _not_yet)
    code, err = _run(["allocate", *TINY, "--budget", "1", "--blocks", "2", "--block-size", "16"], capsys)
    _one_refusal(code, err, "--budget 1 is below the minimum", "--budget", "--rank")
    assert "min_rank" not in err


# ----------------------------------------------------------------------------- score: the damping

@pytest.mark.parametrize("damping", ["0", "-1", "0.0"])
@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_damping_zero_or_below_is_refused_in_cli_words(damping, mode, capsys, nothing_loads):
    code, err = _run(["score", *TINY, "--damping", damping, "--damping-mode", mode], capsys)
    _one_refusal(code, err, "--damping must be a finite number > 0", "--damping 0.1")
    assert "damping_mode=" not in err and "damping=" not in err


# ----------------------------------------------------------------------------- doctor

@pytest.fixture
def cached_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERQ_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    model, tok = models._tiny_llama(n_layers=2, hidden_size=16, heads=2, kv_heads=1)
    folder = models.cached_folder("smollm2-360m")
    models._write_cache(model, tok, folder, "tiny test model")
    return folder


def _flip_a_bit(path):
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))


def test_doctor_finds_a_flipped_bit_in_the_cache(cached_tiny, capsys):
    weights = cached_tiny / "model.safetensors"
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "CRC-32" in out and "verified" in out and out.rstrip().endswith("ok"), out
    size = weights.stat().st_size
    _flip_a_bit(weights)
    assert weights.stat().st_size == size
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    status = next(line for line in out.splitlines() if line.strip().startswith("status"))
    assert "CRC-32 mismatch" in status and f"rm -r '{cached_tiny}'" in status, out
    assert cli.main(["doctor", "--quick"]) == 0           # sizes only: the flipped bit passes, and it says so
    assert "sizes only (--quick)" in capsys.readouterr().out


def test_doctor_reports_an_entry_that_is_a_file_or_has_no_manifest(cached_tiny, capsys):
    (cached_tiny / models.MANIFEST).unlink()               # written before manifests: structure only
    assert cli.main(["doctor"]) == 0
    assert "structure only: written before manifests" in capsys.readouterr().out
    shutil.rmtree(cached_tiny)
    cached_tiny.write_text("not a folder")                  # used to abort doctor with an OSError
    assert cli.main(["doctor"]) == 0
    status = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("status"))
    assert "corrupt" in status and f"rm -r '{cached_tiny}'" in status, status


# ----------------------------------------------------------------------------- course commands

@pytest.fixture
def nothing_runs(monkeypatch):
    from layerq_nb.course import render
    monkeypatch.setattr(render, "execute", _not_yet)


@pytest.mark.parametrize("extra, fragment", [
    (["--notebooks", "99"], "no tutorial 99"),
    (["--timeout", "0"], "--timeout must be >= 1"),
    (["--timeout", "-5"], "--timeout must be >= 1"),
])
def test_course_render_refuses_before_writing_anything(extra, fragment, tmp_path, capsys, nothing_runs):
    out = tmp_path / "site"
    code, err = _run(["course", "render", str(out), *extra], capsys)
    _one_refusal(code, err, fragment)
    assert not out.exists(), sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(notebooks=["99"]), "no tutorial 99"),
    (dict(timeout=0), "timeout must be a number of seconds > 0"),
    (dict(timeout=-1.0), "timeout must be a number of seconds > 0"),
])
def test_render_function_refuses_before_writing_anything(kwargs, fragment, tmp_path, nothing_runs):
    from layerq_nb.course.render import render
    out = tmp_path / "site"
    with pytest.raises(ValueError, match=fragment):
        render(out, **kwargs)
    assert not out.exists()


@pytest.mark.parametrize("extra, fragment", [
    (["--cell-timeout", "0"], "--cell-timeout must be >= 1"),
    (["--notebook-timeout", "0"], "--notebook-timeout must be a finite number > 0"),
    (["--notebook-timeout", "nan"], "--notebook-timeout must be a finite number > 0"),
])
def test_course_grade_refuses_senseless_time_limits(extra, fragment, tmp_path, capsys):
    code, err = _run(["course", "grade", str(tmp_path / "subs"), "--course", str(tmp_path / "course"),
                      "--out", str(tmp_path / "grades"), *extra], capsys)
    _one_refusal(code, err, fragment)
    assert not (tmp_path / "grades").exists()


def test_course_build_into_a_file_is_refused(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, err = _run(["course", "build", str(afile), "--no-wheel"], capsys)
    _one_refusal(code, err, f"OUT {afile} is a file")


def test_the_course_check_reaches_every_course_command():
    parser = cli.build_parser()
    for argv in (["course", "build", "x"], ["course", "render", "x"], ["course", "grade", "s", "--course", "c",
                                                                          "--out", "o"]):
        assert parser.parse_args(argv).check is cli._check_course, argv
