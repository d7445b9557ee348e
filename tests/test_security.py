"""Security basics: names from config become folder names only when they cannot leave their
folder; only integer folders are versions; no input is ever evaluated or unpickled."""
import ast
import json
from pathlib import Path

import pytest

from pipeline import serving
from pipeline.config import SCHEMAS_DIR, EvaluationConfig, IngestConfig
from pipeline.errors import UserError

REPO = Path(__file__).resolve().parent.parent
# Calls that run or unpickle what they are given: none may appear in the pipeline's own code.
FORBIDDEN = {"eval", "exec", "compile", "__import__", "pickle.load", "pickle.loads",
             "marshal.loads", "cloudpickle.loads", "dill.loads", "yaml.load", "os.system",
             "os.popen", "torch.load", "keras.models.load_model", "shelve.open"}


def unsafe_calls(source: str) -> list[str]:
    """'line name' of each call in `source` that runs or unpickles what it is given."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func, parts = node.func, []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if isinstance(func, ast.Name):
            parts.append(func.id)
        name = ".".join(reversed(parts))
        flags = {k.arg for k in node.keywords
                 if isinstance(k.value, ast.Constant) and k.value.value is True}
        safe_keras = name.endswith("load_model") and "safe_mode" in flags  # .keras files only
        if (name in FORBIDDEN and not safe_keras) or "allow_pickle" in flags or "shell" in flags:
            found.append(f"{node.lineno} {name}")
    return found


def test_the_pipeline_never_evaluates_or_unpickles_what_it_reads():
    found = {str(path.relative_to(REPO)): unsafe_calls(path.read_text())
             for path in sorted([*REPO.glob("pipeline/*.py"), *REPO.glob("components/*.py")])}
    assert {path: calls for path, calls in found.items() if calls} == {}


def test_the_scan_finds_what_it_looks_for():
    code = ("eval(x)\npickle.loads(b)\nnp.load(f, allow_pickle=True)\n"
            "subprocess.run(c, shell=True)\nos.system(c)\nre.compile(p)\nnp.load(f)\n"
            "keras.models.load_model(p)\nkeras.models.load_model(p, safe_mode=True)\n")
    assert unsafe_calls(code) == ["1 eval", "2 pickle.loads", "3 np.load", "4 subprocess.run",
                                  "5 os.system", "8 keras.models.load_model"]


def _gates(tmp_path, **changes) -> Path:
    raw = json.loads((SCHEMAS_DIR / "evaluation.json").read_text())
    path = tmp_path / "gates.json"
    path.write_text(json.dumps({**raw, **changes}))
    return path


@pytest.mark.parametrize("name", ["../escape", "/etc", "a/b", ".hidden", "..", "fer\n", "",
                                  "x" * 65, "with space", "c:\\x"])
def test_model_names_that_are_not_one_plain_folder_name_are_refused(tmp_path, name):
    ingest = IngestConfig.load()
    with pytest.raises(UserError, match="model_name"):
        EvaluationConfig.load(ingest.classes, ingest.splits, _gates(tmp_path, model_name=name))


def test_a_plain_model_name_is_accepted(tmp_path):
    ingest = IngestConfig.load()
    gates = EvaluationConfig.load(ingest.classes, ingest.splits,
                                  _gates(tmp_path, model_name="fer-v2.1_cpu"))
    assert gates.model_name == "fer-v2.1_cpu"


@pytest.mark.parametrize("split", ["../train", "a/b", ""])
def test_split_names_that_are_not_one_plain_folder_name_are_refused(tmp_path, split):
    raw = json.loads((SCHEMAS_DIR / "ingest.json").read_text())
    raw["hash_split"] = {split: 0.8, "eval": 0.1, "test": 0.1}
    raw["usage_to_split"] = {"Training": split, "PublicTest": "eval", "PrivateTest": "test"}
    path = tmp_path / "ingest.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(UserError, match="split names"):
        IngestConfig.load(path)


def test_only_integer_folders_holding_a_saved_model_are_versions(tmp_path):
    for name in ["1", "12", "٣", "1a", "-4", "3.0", " 5", "6", "1" * 19]:
        (tmp_path / name).mkdir()
        if name != "6":
            (tmp_path / name / "saved_model.pb").write_bytes(b"")
    assert serving.versions(tmp_path) == [1, 12]


def test_a_trained_model_that_carries_code_is_refused_not_run(tmp_path):
    """components.model.load_trained: a Lambda layer's marshalled function is never run; an
    older format, where safe mode does not apply, is not read at all."""
    import tf_keras as keras

    from components.model import load_trained

    ran = tmp_path / "ran"
    marker = str(ran)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(
        lambda x: x + len(open(marker, "w").name))])
    model.save(tmp_path / "model.keras")
    model.save(tmp_path / "model.h5")
    ran.unlink(missing_ok=True)
    with pytest.raises(ValueError, match="(?i)lambda"):
        load_trained(str(tmp_path / "model.keras"))
    with pytest.raises(ValueError, match="not a .keras model file"):
        load_trained(str(tmp_path / "model.h5"))
    assert not ran.exists()
