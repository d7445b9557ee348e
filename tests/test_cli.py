"""The command line as a user meets it: a real subprocess, exit codes and messages (its main() in
this process where a test makes several runs of it)."""
import json
import signal
import subprocess
import sys

import pytest

from pipeline.run import main
from tests.helpers import valid_rows, write_csv


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pipeline.run", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def run_here(capsys, monkeypatch):
    """The same command's main() in this process: what it prints and returns, without a fresh
    interpreter's start-up for each of a test's runs."""
    def run(*args, cwd):
        monkeypatch.chdir(cwd)
        # main() makes Ctrl-C and SIGTERM end the process at once: pytest's own handling back.
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        capsys.readouterr()  # only what this call prints
        try:
            returncode = main(list(args))
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, returncode, out, err)
    return run


def test_user_error_is_one_paragraph_without_traceback(tmp_path):
    result = run_cli("--data", str(tmp_path / "missing.csv"), "--pipeline-root",
                     str(tmp_path / "root"), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: No input file matches")  # and nothing else
    assert "missing.csv" in result.stderr and "\n\n" not in result.stderr.strip()


def test_run_ingests_and_reports_reconciled_counts(tmp_path, run_here):
    data = write_csv(tmp_path / "fer.csv", valid_rows(12))
    # main() in this process: the other tests here run the real command; this one is about what
    # a run prints and reuses (and all three runs must be the same code: a subprocess imports
    # the installed package, which need not be this checkout).
    result = run_here("--runner=DirectRunner", "--data", str(data), "--stop-after", "ExampleGen",
                      "--pipeline-root", str(tmp_path / "root"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "reconciled: 12 = 12 written + 0 quarantined + 0 blank" in result.stdout
    out = tmp_path / "root" / "ExampleGen" / "1"
    assert (out / "_COMPLETE").exists() and (out / "counts.json").exists()
    # A second run on the same input reuses the first one's outputs and does not rewrite them.
    stamp = (out / "counts.json").stat().st_mtime_ns
    again = run_here("--data", str(data), "--pipeline-root", str(tmp_path / "root"),
                    "--stop-after", "ExampleGen", cwd=tmp_path)
    assert again.returncode == 0 and f"ExampleGen: reusing {out}" in again.stdout
    assert not (tmp_path / "root" / "ExampleGen" / "2").exists()
    assert (out / "counts.json").stat().st_mtime_ns == stamp
    # Changed input: a new execution beside the first.
    write_csv(tmp_path / "fer.csv", valid_rows(13))
    assert run_here("--data", str(data), "--pipeline-root", str(tmp_path / "root"),
                    "--stop-after", "ExampleGen", cwd=tmp_path).returncode == 0
    assert (tmp_path / "root" / "ExampleGen" / "2" / "_COMPLETE").exists()


def test_help_explains_flags_and_beam_passthrough(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for flag in ("--data", "--pipeline-root", "--stop-after", "--max-bad-rows", "DataflowRunner"):
        assert flag in result.stdout


def test_beam_flags_reach_beam_and_typos_are_refused(tmp_path, run_here):
    data = write_csv(tmp_path / "fer.csv", valid_rows(6))
    common = ("--data", str(data), "--pipeline-root", str(tmp_path / "root"))
    bad_runner = run_cli(*common, "--runner=NoSuchRunner", cwd=tmp_path)
    assert bad_runner.returncode == 2 and "Traceback" not in bad_runner.stderr
    assert "NoSuchRunner" in bad_runner.stderr
    for dask in ("--runner=DaskRunner", "--runner=apache_beam.runners.dask.dask_runner.DaskRunner"):
        refused = run_here(*common, dask, cwd=tmp_path)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "cannot run this pipeline" in " ".join(refused.stderr.split())
    typo = run_cli(*common, "--pipline-root=x", cwd=tmp_path)
    assert typo.returncode == 2 and "WARNING" not in typo.stderr
    assert "--pipline-root (did you mean --pipeline-root?)" in " ".join(typo.stderr.split())
    assert not (tmp_path / "root").exists()  # both refused before any work


def test_each_step_says_when_it_starts_and_how_long_it_took(tmp_path, run_here):
    data = write_csv(tmp_path / "faces.csv", valid_rows(60))
    args = ("--data", str(data), "--pipeline-root", str(tmp_path / "root"),
            "--stop-after", "StatisticsGen")
    text = run_here(*args, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "ExampleGen: started"
    assert "ExampleGen: 60 rows in 1 file(s)" in text.stdout  # the size of the work, up front
    for step in ("ExampleGen", "StatisticsGen"):
        assert any(line.startswith(f"{step}: done in ") for line in lines)
    table = lines.index(next(line for line in lines if line.startswith("Time per step (")))
    assert [line.split()[0] for line in lines[table + 1:table + 3]] == ["ExampleGen",
                                                                       "StatisticsGen"]

    again = run_here(*args, "--log-format", "json", cwd=tmp_path)  # reused, for a scheduler
    events = [json.loads(line) for line in again.stdout.splitlines()]  # every line is JSON
    assert [e["event"] for e in events if e["event"] != "log"] == [
        "step_started", "step_finished", "step_started", "step_finished", "run_finished"]
    finished = [e for e in events if e["event"] == "step_finished"]
    assert [(e["step"], e["cached"]) for e in finished] == [("ExampleGen", True),
                                                            ("StatisticsGen", True)]
    assert {"ExampleGen", "StatisticsGen"} == set(events[-1]["steps"])
    reuse = [e for e in events if e["event"] == "log" and "reusing" in e["message"]]
    assert [e["step"] for e in reuse] == ["ExampleGen", "StatisticsGen"]  # labelled

    quiet = run_here(*args, "--quiet", cwd=tmp_path)  # no verdict step ran: nothing to say
    assert quiet.returncode == 0 and quiet.stdout == ""


def test_a_failed_run_is_an_event_and_leaves_nothing_behind(tmp_path, run_here):
    result = run_here("--data", str(tmp_path / "missing.csv"), "--pipeline-root",
                      str(tmp_path / "root"), "--log-format", "json", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: No input file matches")
    [event] = [json.loads(line) for line in result.stdout.splitlines()]
    assert event["event"] == "run_failed" and event["exit_code"] == 2
    assert "missing.csv" in event["error"]
    assert not (tmp_path / "root").exists()  # no root, store or empty execution folder
