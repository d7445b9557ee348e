"""Pusher: a blessed SavedModel becomes the next version in the serving directory, atomically.

Layout (TF Serving's): <serving_dir>/<model_name>/<version>/ with version = 1, 2, 3, ... On a
local disk the model is copied into a hidden folder beside the versions (saved_model.pb last,
every file flushed to disk), then renamed to its version number in one step; on object storage,
where a rename is a copy, straight into its version folder with saved_model.pb last, which is
what makes a version count (pipeline.serving). Either way TF Serving, predict and the next run's
Evaluator never take a half-copied model for a version. Existing versions are never overwritten
or removed, and the model serving already is not pushed again: pushing is idempotent.
"""
import json
from pathlib import Path

from pipeline import artifacts, serving
from pipeline.artifact_types import PUSHED_MODEL
from pipeline.errors import UserError
from pipeline.metadata import tree_fingerprint


def run(model_dir: str, serving_dir: str, model_name: str, evaluation: dict,
        output_dir: str) -> dict:
    """Push model_dir if `evaluation` blessed it; returns (and stores) what was done and why."""
    if not evaluation["blessed"]:
        result = {"pushed": False, "reasons": evaluation["reasons"]}
    else:
        target = _push(str(model_dir), artifacts.join(serving_dir, model_name))
        result = {"pushed": True, "version": int(target.rstrip("/").rpartition("/")[2]),
                  "path": target}
    artifacts.write_text(PUSHED_MODEL.path(output_dir, "record"), json.dumps(result, indent=2))
    return result


def _push(model: str, model_root: str) -> str:
    try:
        artifacts.makedirs(model_root)
        if artifacts.remote(model_root):  # no lock file to share there: one root pushes at a
            return _copy_in(model, model_root)  # time (README, "Beyond one machine")
        with artifacts.lock(artifacts.join(model_root, artifacts.PUSH_LOCK)):  # other roots push
            return _copy_in(model, model_root)
    except Exception as e:
        import tensorflow as tf

        if not isinstance(e, (OSError, tf.errors.OpError)):  # object storage says OpError
            raise
        why = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e).split(":")[0]
        raise UserError(f"Could not push the model into {model_root}: {why}. "
                        f"Check that the serving directory is writable and has space; the "
                        f"versions already there are untouched.") from None


def _copy_in(model: str, model_root: str) -> str:
    for stale in artifacts.listdir(model_root):  # left by an interrupted push
        if stale.startswith(artifacts.STAGING):
            artifacts.remove(artifacts.join(model_root, stale))
    newest = max(serving.versions(model_root), default=0)
    if newest and tree_fingerprint(artifacts.join(model_root, newest)) == tree_fingerprint(model):
        return artifacts.join(model_root, newest)  # pushed already (by a run that died before
        #                                            recording it)
    if artifacts.remote(model_root):  # copied straight into place: a folder past the newest
        for name in artifacts.listdir(model_root):  # version is a push that was interrupted
            if name.isdigit() and int(name) > newest:
                artifacts.remove(artifacts.join(model_root, name))
        target = artifacts.join(model_root, newest + 1)
        artifacts.copy_tree(model, target, last=artifacts.SAVED_MODEL)
        return target
    version = newest + 1
    while artifacts.exists(artifacts.join(model_root, version)):  # never replace a version,
        version += 1                                               # nor a half-copied one
    target = artifacts.join(model_root, version)
    partial = artifacts.staging_path(target)
    try:
        artifacts.copy_tree(model, partial, last=artifacts.SAVED_MODEL)
        artifacts.flush(Path(partial))
    except BaseException:  # a full disk, say: give the space back, leave no half model behind
        artifacts.remove(partial)
        raise
    artifacts.publish(partial, target)
    return target
