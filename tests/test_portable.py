"""The Beam stages through Beam's PortableRunner: submitted to Beam's own job service, run by SDK
workers in processes of their own (a worker pool, --environment_type=EXTERNAL), all on
127.0.0.1; their outputs equal the DirectRunner's."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv

from pipeline import artifacts
from pipeline.config import LABEL_FEATURE, PIXELS_FEATURE
from tests.helpers import free_port, run_inputs

pytestmark = pytest.mark.slow  # two whole runs and two services

REPO = Path(__file__).resolve().parent.parent


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """(job service port, worker pool port): started, health-checked, stopped at the end."""
    env = {**os.environ, "PYTHONPATH": str(REPO),  # the workers unpickle the pipeline's DoFns
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ports, started = {"job": free_port(), "pool": free_port()}, []
    logs = tmp_path_factory.mktemp("services")
    try:
        for kind, port in ports.items():
            started.append(subprocess.Popen(
                [sys.executable, "-m", "tests.beam_services", kind, str(port)], env=env,
                cwd=REPO, stdout=open(logs / f"{kind}.log", "w"), stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        while not all(_listening(p) for p in ports.values()):
            assert time.monotonic() < deadline, "Beam's services did not start"
            assert all(p.poll() is None for p in started), "a Beam service exited"
            time.sleep(0.2)
        yield ports["job"], ports["pool"]
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _run(base: Path, name: str, data, gates, *beam) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--data", str(data), "--pipeline-root",
         str(base / name), "--serving-dir", str(base / f"{name}-serving"), "--evaluation-config",
         str(gates), "--epochs", "1", "--batch-size", "32", *beam],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def _statistics(root: Path, split: str):
    path = os.path.join(artifacts.split_dir(root / "StatisticsGen" / "1", split), "FeatureStats.pb")
    return tfdv.load_stats_binary(path).datasets[0]


def _examples(examples: Path, split: str) -> list[tuple]:
    """The split's examples as sorted (label, pixels): TFX's encoder writes the two features in
    an order that varies between processes, so the bytes of equal examples may differ."""
    files = artifacts.example_files(examples, split)
    parsed = (tf.train.Example.FromString(r.numpy()).features.feature
              for r in tf.data.TFRecordDataset(files, compression_type="GZIP"))
    return sorted((f[LABEL_FEATURE].int64_list.value[0], tuple(f[PIXELS_FEATURE].int64_list.value))
                  for f in parsed)


def test_the_beam_stages_run_on_the_portable_runner_with_the_direct_runners_results(
        services, tmp_path):
    job, pool = services
    data, gates = run_inputs(tmp_path)
    portable = _run(tmp_path, "portable", data, gates, "--runner=PortableRunner",
                    f"--job_endpoint=127.0.0.1:{job}", "--environment_type=EXTERNAL",
                    f"--environment_config=127.0.0.1:{pool}")
    direct = _run(tmp_path, "direct", data, gates)
    for out in (portable, direct):
        assert "now serving version 1" in out
    first = {name: tmp_path / name / "ExampleGen" / "1" for name in ("portable", "direct")}
    assert json.loads((first["portable"] / "counts.json").read_text()) == \
        json.loads((first["direct"] / "counts.json").read_text())
    for split in ("train", "eval", "test"):
        examples = _examples(first["portable"], split)
        assert examples and examples == _examples(first["direct"], split)
    for split in ("train", "eval", "test"):
        portable_stats, direct_stats = (_statistics(tmp_path / name, split)
                                        for name in ("portable", "direct"))
        assert portable_stats.num_examples == direct_stats.num_examples > 0
        means = [{f.path.step[0]: f.num_stats.mean for f in s.features if f.HasField("num_stats")}
                 for s in (portable_stats, direct_stats)]
        assert means[0].keys() == means[1].keys() and "mean_brightness" in means[0]
        assert means[0] == pytest.approx(means[1], rel=1e-6)
    evaluations = [json.loads((tmp_path / name / "Evaluator" / "1" / "evaluation.json")
                              .read_text())["examples"] for name in ("portable", "direct")]
    assert evaluations[0] == evaluations[1] > 0
