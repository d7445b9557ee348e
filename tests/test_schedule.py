"""The scheduling lines of the README, run as written: only the paths point at test folders."""
import json
import re
import subprocess
from pathlib import Path

import pytest

from pipeline import default_data, serving
from pipeline.config import SCHEMAS_DIR

REPO = Path(__file__).resolve().parent.parent


def readme_line(marker: str) -> str:
    """The indented line right after <!-- marker --> in the README."""
    text = (REPO / "README.md").read_text()
    return re.search(rf"<!-- {marker} -->\n    (.+)\n", text).group(1)


@pytest.mark.slow  # whole runs
def test_the_crontab_line_and_the_systemd_unit_retrain_on_the_newest_span(tmp_path):
    drops = tmp_path / "drops"
    default_data.write_csv(drops / "span-20261101" / "part-0.csv", rows=300, seed=1)
    default_data.write_csv(drops / "span-20261102" / "part-0.csv", rows=900, seed=11)
    etc = tmp_path / "etc"
    etc.mkdir()
    trainer = json.loads((SCHEMAS_DIR / "trainer.json").read_text())
    (etc / "trainer.json").write_text(json.dumps({**trainer, "epochs": 1, "batch_size": 32}))
    gates = json.loads((SCHEMAS_DIR / "evaluation.json").read_text())
    (etc / "evaluation.json").write_text(json.dumps({**gates, "floors": {"accuracy": 0}}))
    paths = {"/opt/fer-pipeline": str(REPO), "/data/fer/drops": str(drops),
             "/etc/fer": str(etc), "/var/lib/fer/root": str(tmp_path / "root"),
             "/srv/models": str(tmp_path / "models"), "/var/log": str(tmp_path)}

    def localized(command: str) -> str:
        for old, new in paths.items():
            command = command.replace(old, new)
        return command

    cron = readme_line("crontab").split(maxsplit=5)[5]  # after the five schedule fields
    result = subprocess.run(["bash", "-c", localized(cron)], capture_output=True, text=True,
                            timeout=600)
    log = (tmp_path / "fer-retrain.log").read_text()
    assert result.returncode == 0, log[-3000:]
    assert "Spans: span-20261102 (the newest 1 of 2" in log
    assert "now serving version 1" in log
    assert (tmp_path / "models" / "fer" / "1" / "saved_model.pb").exists()

    exec_start = readme_line("systemd").removeprefix("ExecStart=")
    again = subprocess.run(localized(exec_start).split(), capture_output=True, text=True,
                           cwd=REPO, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing new" in again.stdout and "Trainer: reusing" in again.stdout
    assert serving.versions(tmp_path / "models" / "fer") == [1]
