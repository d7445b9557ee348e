"""The step list as data: inputs declared by name and bound by the runner, checked when the list
is built, every keyed input in the fingerprint; artifact files named once; pushes scoped to
their root. Real ML Metadata (SQLite), no pipeline run."""
import inspect
import json
import pathlib
import re

import pytest

from pipeline import artifact_types, metadata, run
from pipeline.config import resolve
from pipeline.progress import Progress


def toy_body(context, out, examples):
    return {"read": examples.uri}


def test_a_misspelt_input_is_refused_when_the_step_list_is_built():
    good = run.Step("A", artifact_types.EXAMPLES, toy_body, lambda *a, **k: "",
                    inputs={"examples": "data files"})
    assert run.checked((good,)) == (good,)
    misspelt = good._replace(name="B", inputs={"examples": "ExampleGenn"})
    with pytest.raises(ValueError, match="examples='ExampleGenn' name no earlier step"):
        run.checked((good, misspelt))
    later = good._replace(name="C", inputs={"examples": "D"})  # a step that comes after it
    with pytest.raises(ValueError, match="name no earlier step"):
        run.checked((later, good._replace(name="D")))
    untaken = good._replace(inputs={"statistics": "data files"})
    with pytest.raises(ValueError, match="its body takes no statistics"):
        run.checked((untaken,))


def test_no_body_receives_the_whole_run_only_its_declared_inputs():
    for step in run.steps():
        taken = list(inspect.signature(step.body).parameters)
        assert taken == ["context", "out", *step.inputs], step.name


@pytest.fixture
def store(tmp_path):
    (tmp_path / "root").mkdir()
    return metadata.Store(str(tmp_path / "root"))


def test_every_keyed_input_is_in_the_fingerprint_and_only_those(tmp_path, store):
    """Run.execute with real ML Metadata: a changed input runs the step again; a changed unkeyed
    input (lineage only) reuses it; either way the execution records the input by its name."""
    args = run.parse_args(["--data", "x.csv"])[0]
    context = run.Context(resolve(args), args, (), str(tmp_path / "root"))
    calls = []

    def body(context, out, examples, seen):
        calls.append(examples.fingerprint)
        return {"n": len(calls)}

    step = run.Step("Toy", artifact_types.EXAMPLES, body, lambda *a, **k: "",
                    inputs={"examples": "data files", "seen": "serving model"},
                    unkeyed=("seen",))

    def file_input(print_):
        [artifact] = store.input_files({"/data/x.csv": print_})
        return run.Output("/data/x.csv", None, artifact, print_)

    def execute(examples, seen):
        return run.Run(context, store, Progress()).execute(step, {"examples": examples,
                                                                  "seen": seen})

    first = execute(file_input("a"), file_input("s1"))
    assert not first.cached and calls == ["a"]
    assert execute(file_input("a"), file_input("s2")).cached  # unkeyed: reused
    again = execute(file_input("b"), file_input("s1"))
    assert not again.cached and calls == ["a", "b"]
    events = store.store.get_events_by_execution_ids(
        [e.id for e in store.store.get_executions_by_type("Toy")])
    names = sorted({e.path.steps[0].key for e in events})
    assert names == ["examples", "output", "seen"]


def test_pushes_are_looked_up_in_their_own_root_only(tmp_path):
    """Two roots sharing one database: a model one pushed is not the other's."""
    config = tmp_path / "metadata.json"
    config.write_text(json.dumps({"sqlite": {"filename_uri": str(tmp_path / "shared.sqlite")}}))
    roots = {name: metadata.Store(str(tmp_path / name), metadata.store_connection(
        str(tmp_path / name), str(config))) for name in ("a", "b")}
    pusher = roots["a"].start("Pusher", "f", {}, [], str(tmp_path / "a" / "Pusher" / "1"), "c")
    roots["a"].finish(pusher, artifact_types.PUSHED_MODEL, "/s/fer/1", {"pushed": True})
    assert roots["a"].pushed("/s/fer/1") is not None
    assert roots["b"].pushed("/s/fer/1") is None
    assert [a.uri for a in metadata.pushes(roots["b"].store, roots["b"].pipeline.id)] == []
    # Root b records the model it finds serving as such, not as its own push.
    found = roots["b"].model("/s/fer/1", "content")
    [kind] = roots["b"].store.get_artifact_types_by_id(
        [roots["b"].store.get_artifacts_by_id([found])[0].type_id])
    assert kind.name == artifact_types.SERVING_MODEL.name


def test_each_artifact_file_is_named_only_in_the_artifact_types():
    """A file an artifact holds is typed once: no module spells its name itself."""
    names = {name for kind in vars(artifact_types).values()
             if isinstance(kind, artifact_types.ArtifactType) for name in kind.files.values()
             if "." in name}
    here = pathlib.Path(run.__file__).parents[1]
    for module in [*here.glob("pipeline/*.py"), *here.glob("components/*.py")]:
        if module.name == "artifact_types.py":
            continue
        # Config files of schemas/ (some named alike by chance) are named where they are read.
        text = re.sub(r"""(load_json|config_path|_load_file|_from_json)\(([^()]*)\)""", "",
                      module.read_text())
        spelt = [name for name in names if f'"{name}"' in text or f"'{name}'" in text]
        assert not spelt, f"{module.name} spells {spelt}"
