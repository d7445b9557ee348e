"""The package installed from a wheel (not editable) runs from another directory, with the
configuration it carries as package data."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import run_inputs

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # builds a wheel, then a run
def test_a_wheel_carries_its_configuration_and_runs_from_another_directory(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and egg-info/ beside setup.py
    for name in ("pipeline", "components", "schemas"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.py", source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(source)], check=True, timeout=300,
                   cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("fer_pipeline-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (REPO / "schemas").iterdir())
    assert sorted(n.split("/")[-1] for n in names if n.startswith("pipeline/schemas/")) == shipped
    assert not any(n.startswith(("tests/", "bench/")) for n in names)

    # Installed beside the dependencies already here, used from a folder outside the checkout.
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    data, gates = run_inputs(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import pipeline.config as c, components; "
                            "print(c.SCHEMAS_DIR); print(components.__file__)"],
                           capture_output=True, text=True, env=env, cwd=work, check=True)
    assert where.stdout.split() == [str(site / "pipeline" / "schemas"),
                                    str(site / "components" / "__init__.py")]
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--data", str(data), "--stop-after",
         "ExampleValidator"], capture_output=True, text=True, env=env, cwd=work, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"the curated {site / 'pipeline' / 'schemas' / 'schema.pbtxt'}" in result.stdout
    assert "ExampleValidator: data passed" in result.stdout
    assert sorted(p.name for p in work.iterdir()) == ["pipeline_root"]
