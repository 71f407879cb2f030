"""The command line's failures: one line ``Error: ...``, documented exit codes, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from forecast.cli import main

FORECAST = [sys.executable, "-m", "forecast.cli"]


def _cli(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from forecast.cli import main; main()", *map(str, args)],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


def _misspelled(trained_registry, tmp_path: Path) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(trained_registry.data_dir, bad)
    path = bad / "assessments.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace("phq9_total", "phq9_totl")
    path.write_text("".join(lines))
    return bad


def test_validate_suggests_the_column_and_summarises_the_cascade(trained_registry,
                                                                  tmp_path: Path) -> None:
    bad = _misspelled(trained_registry, tmp_path)
    out = CliRunner().invoke(main, ["validate", str(bad)])
    assert out.exit_code == 1
    lines = out.output.splitlines()
    assert "did you mean 'phq9_total'?" in lines[0]
    # The rows that hold no answer because of the rename are one summary line, not listed.
    assert not any(line.startswith("assessments.csv, row") and "no answer" in line
                   for line in lines)
    assert len(lines) == 3, out.output
    assert "follow from the unknown column 'phq9_totl'" in lines[1]
    assert "fix the column name first" in lines[1]


def test_train_on_bad_data_is_one_error_line(trained_registry, tmp_path: Path) -> None:
    bad = _misspelled(trained_registry, tmp_path)
    out = CliRunner().invoke(main, ["train", str(bad), "--models", str(tmp_path / "m")])
    assert out.exit_code == 1
    errors = [line for line in out.stderr.splitlines() if not line.startswith("forecast train:")]
    assert len(errors) == 1, out.stderr  # progress lines aside, one line
    assert errors[0].startswith("Error: the data does not follow the data contract")
    assert "did you mean 'phq9_total'" in errors[0]
    assert f"forecast validate {bad}" in errors[0]


def test_unwritable_registry_fails_before_any_work(trained_registry, tmp_path: Path,
                                                  monkeypatch) -> None:
    # Works as root too: the registry path is under a regular file, so no folder can exist.
    from forecast import training

    blocker = tmp_path / "file"
    blocker.write_text("x")
    calls = []
    monkeypatch.setattr(training, "landmark_dataset", lambda *a, **k: calls.append(a))
    out = CliRunner().invoke(main, ["train", str(trained_registry.data_dir), "--models",
                                    str(blocker / "models")])
    assert out.exit_code == 1
    assert "Traceback" not in out.output
    assert out.stderr.startswith("Error: the model registry")
    assert "not writable" in out.stderr
    assert calls == []  # no data loaded, no fit started


def test_unknown_model_version_lists_versions_subprocess(trained_registry, tmp_path) -> None:
    proc = _cli("predict", trained_registry.data_dir, "--as-of", "2026-06-01", "--out",
                tmp_path / "p.csv", "--model", "20200101T000000000Z-deadbeef",
                "--models", trained_registry.models_dir)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("Error: ")
    assert trained_registry.version in proc.stderr
    assert "Traceback" not in proc.stderr


def test_usage_errors_exit_2_with_did_you_mean() -> None:
    out = CliRunner().invoke(main, ["trian"])
    assert out.exit_code == 2
    assert "Did you mean 'train'?" in out.output
    opt = CliRunner().invoke(main, ["evaluate", ".", "--modle", "x"])
    assert opt.exit_code == 2
    assert "Did you mean" in opt.output
    assert "'--model'" in opt.output


def test_unexpected_errors_are_one_line_and_traceback_only_with_debug(monkeypatch,
                                                                      tmp_path: Path) -> None:
    from forecast import lifecycle

    def boom(*a, **k):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(lifecycle, "statuses", boom)
    out = CliRunner().invoke(main, ["models", "list", "--models", str(tmp_path)])
    assert out.exit_code == 3
    assert out.output.startswith("Error: internal error (ZeroDivisionError: bug)")
    assert "--debug" in out.output
    assert "Traceback" not in out.output
    debug = CliRunner().invoke(main, ["--debug", "models", "list", "--models", str(tmp_path)])
    assert isinstance(debug.exception, ZeroDivisionError)  # raised: Python prints the traceback


def test_read_only_registry_in_a_subprocess_shows_no_traceback(tmp_path: Path,
                                                              trained_registry) -> None:
    # The read-only case as root: the registry path lies under a regular file.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = _cli("models", "approve", trained_registry.version, "--models", blocker / "m")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("Error: ")


def test_progress_lines_when_stderr_is_not_a_terminal(trained_registry, tmp_path: Path) -> None:
    proc = _cli("train", trained_registry.data_dir, "--models", tmp_path / "m", "--bootstrap",
                "0", env={"FORECAST_PROGRESS_SECONDS": "0.2"})
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("forecast train:")]
    assert any(" fit " in line for line in lines)
    assert lines[-1].startswith("forecast train: done 100% elapsed")
    assert all(" ETA " in line for line in lines)
    assert proc.stdout.strip().count("\n") == 0  # stdout: the version id only
    quiet = _cli("--quiet", "train", trained_registry.data_dir, "--models", tmp_path / "m",
                 "--bootstrap", "0")
    assert quiet.returncode == 0
    assert "forecast train:" not in quiet.stderr


def test_progress_eta_and_percent() -> None:
    import io

    from forecast.commands.progress import Progress

    buf = io.StringIO()
    with Progress(4, "evaluate", stream=buf, tty=False, enabled=True, interval=60) as p:
        p.stage("fold 1")
        p.update()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "forecast evaluate: 0% elapsed 0:00:00 ETA ?"
    assert lines[2].startswith("forecast evaluate: fold 1 25% elapsed 0:00:00 ETA 0:00:0")
    assert lines[-1].startswith("forecast evaluate: done 100%")
