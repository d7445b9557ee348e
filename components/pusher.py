"""Pusher: a blessed SavedModel becomes the next version in the serving directory, atomically.

Layout (TF Serving's): <serving_dir>/<model_name>/<version>/ with version = 1, 2, 3, ... The model
is copied into a hidden folder beside the versions (saved_model.pb last, every file flushed to
disk), then renamed to its version number in one step: TF Serving, predict and the next run's
Evaluator never see a half-copied model. Existing versions are never overwritten or removed, and
the model serving already is not pushed again: pushing is idempotent.
"""
import json
import shutil
from pathlib import Path

from pipeline import artifacts, serving
from pipeline.errors import UserError
from pipeline.metadata import tree_fingerprint


def run(model_dir: str, serving_dir: str, model_name: str, evaluation: dict,
        output_dir: str) -> dict:
    """Push model_dir if `evaluation` blessed it; returns (and stores) what was done and why."""
    if not evaluation["blessed"]:
        result = {"pushed": False, "reasons": evaluation["reasons"]}
    else:
        target = _push(Path(model_dir), Path(serving_dir) / model_name)
        result = {"pushed": True, "version": int(target.name), "path": str(target)}
    Path(output_dir, "pushed.json").write_text(json.dumps(result, indent=2))
    return result


def _push(model: Path, model_root: Path) -> Path:
    try:
        model_root.mkdir(parents=True, exist_ok=True)
        with artifacts.lock(model_root / ".lock"):  # pipelines with other roots may push here
            return _copy_in(model, model_root)
    except OSError as e:
        if isinstance(e, shutil.Error):  # copytree lists (source, target, why) per failed file
            e = e.args[0][0][2] if e.args and e.args[0] else e
        why = getattr(e, "strerror", None) or str(e).split(":")[0]
        raise UserError(f"Could not push the model into {model_root}: {why}. "
                        f"Check that the serving directory is writable and has space; the "
                        f"versions already there are untouched.") from None


def _copy_in(model: Path, model_root: Path) -> Path:
    for stale in model_root.glob(artifacts.STAGING + "*"):  # left by an interrupted push
        shutil.rmtree(stale, ignore_errors=True)
    newest = max(serving.versions(model_root), default=0)
    if newest and tree_fingerprint(model_root / str(newest)) == tree_fingerprint(model):
        return model_root / str(newest)  # pushed already (by a run that died before recording it)
    version = newest + 1
    partial = artifacts.staging_path(model_root / str(version))
    try:
        shutil.copytree(model, partial, ignore=lambda d, names: (
            ["saved_model.pb"] if Path(d) == model else []))
        shutil.copy2(model / "saved_model.pb", partial / "saved_model.pb")
        artifacts.flush(partial)
    except BaseException:  # a full disk, say: give the space back, leave no half model behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    while (model_root / str(version)).exists():  # never replace a version
        version += 1
    target = model_root / str(version)
    artifacts.publish(partial, target)
    return target

