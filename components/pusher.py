"""Pusher: a blessed SavedModel becomes the next version in the serving directory, atomically.

Layout (TF Serving's): <serving_dir>/<model_name>/<version>/ with version = 1, 2, 3, ... On a
local disk the model is copied into a hidden folder beside the versions (saved_model.pb last,
every file flushed to disk), then renamed to its version number in one step; on object storage,
where a rename is a copy, straight into its version folder with saved_model.pb last, which is
what makes a version count (pipeline.serving). Either way TF Serving, predict and the next run's
Evaluator never take a half-copied model for a version. Existing versions are never overwritten
or removed, and the model serving already is not pushed again: pushing is idempotent.

A model is pushed only when the Evaluator blessed it and, when the InfraValidator ran, it
blessed it too (TFX's Pusher requires both). Beside the SavedModel the version gets what the
devices and the people need, inside it before it counts: exports/ with each export (TensorFlow
Lite float32 and int8, ONNX) that passed its parity gate, the exports' record (exports.json)
and README.txt saying what shipped and why the others did not; and the model card (model_card.json, model_card.html). TF
Serving loads only the SavedModel's own files (saved_model.pb, variables/, assets/) and ignores
the rest of the folder; a version's content, for idempotence and for "what serves", is its
SavedModel's (serving.model_content).
"""
import json
from pathlib import Path

from pipeline import artifacts, model_card, serving
from pipeline.artifact_types import PUSHED_MODEL, SERVING_MODEL, EXPORTED_MODELS
from pipeline.errors import UserError


def run(model_dir: str, serving_dir: str, model_name: str, evaluation: dict,
        output_dir: str, infra: tuple[str, dict] | None = None,
        exports: tuple[str, dict] | None = None, card: dict | None = None) -> dict:
    """Push model_dir if `evaluation` (and `infra`, the InfraValidator's (folder, verdict))
    blessed it, with the exports (the Exporter's (folder, exports.json)) that passed and
    the model card (model_card.build's, without its version); returns (and stores) what was
    done and why."""
    if not evaluation["blessed"]:
        result = {"pushed": False, "reasons": evaluation["reasons"]}
    elif infra is not None and not infra[1].get("blessed"):
        where, verdict = infra
        result = {"pushed": False, "refused_by": "InfraValidator", "reasons": verdict["reasons"],
                  "why": refusal(verdict, where)}
    else:
        shipped = _shipped(exports)

        def extras(folder: str, version: int) -> None:
            _add_exports(folder, exports, shipped)
            if card is not None:
                model_card.write(folder, model_card.complete(card, version, _final(
                    serving_dir, model_name, version)))

        target = _push(str(model_dir), artifacts.join(serving_dir, model_name), extras)
        result = {"pushed": True, "version": int(target.rstrip("/").rpartition("/")[2]),
                  "path": target}
        if exports and exports[1].get("exports"):
            result["exports"] = {name: ("shipped" if name in shipped else "not shipped: "
                                        + "; ".join(e.get("reasons") or ["-"]))
                                 for name, e in exports[1]["exports"].items()}
        if card is not None:
            result["model_card"] = SERVING_MODEL.path(target, "card_page")
    artifacts.write_text(PUSHED_MODEL.path(output_dir, "record"), json.dumps(result, indent=2))
    return result


def refusal(verdict: dict, where: str) -> str:
    """Why a model the InfraValidator did not bless is not pushed: one paragraph."""
    return (f"The InfraValidator did not bless the model ({where}): "
            + "; ".join(verdict["reasons"]) + ". A server loading it would fail or answer "
            f"otherwise than the model the Trainer trained, so it was not pushed and the serving "
            f"model is unchanged. Fix the export (or the bounds in schemas/deployment.json, "
            f"--deployment-config) and run again.")


def _final(serving_dir: str, model_name: str, version: int) -> str:
    return artifacts.join(artifacts.absolute(serving_dir), model_name, version)


def _shipped(exports: tuple[str, dict] | None) -> list[str]:
    if not exports:
        return []
    return [name for name, e in (exports[1].get("exports") or {}).items() if e.get("shipped")]


def _add_exports(folder: str, exports: tuple[str, dict] | None, shipped: list[str]) -> None:
    """exports/ in a version: the exports that passed, their record, and a note on each."""
    if not exports or not exports[1].get("exports"):
        return
    source, record = exports
    target = SERVING_MODEL.path(folder, "exports")
    for name in shipped:
        artifacts.copy_file(EXPORTED_MODELS.path(source, name), EXPORTED_MODELS.path(target, name))
    artifacts.copy_file(EXPORTED_MODELS.path(source, "exports"), EXPORTED_MODELS.path(target,
                                                                                   "exports"))
    artifacts.write_text(EXPORTED_MODELS.path(target, "notes"), exports_note(record, shipped))


def exports_note(record: dict, shipped: list[str]) -> str:
    """What exports/README.txt says: each export, shipped or not and why."""
    saved = record["saved_model"]["accuracy"]
    parity = record["parity"]
    lines = [f"Exports of this version, each scored in its runtime (the TFLite interpreter, "
             f"onnxruntime) on the {record['examples']} {record['split']} examples beside the SavedModel (accuracy "
             f"{saved:.3f}). Parity gate (evaluation.json, export_parity): an export is held back "
             f"when it is behind the SavedModel by more than {parity['accuracy']} overall, or "
             f"{parity['class_accuracy']} in a class with at least "
             f"{record['min_class_examples']} examples, and the "
             f"{record['confidence']:.0%} interval of the difference lies wholly below 0.", ""]
    for name, export in record["exports"].items():
        file = Path(EXPORTED_MODELS.files[name]).name
        if name in shipped:
            lines.append(f"{file}: shipped. Accuracy {export['accuracy']:.3f}; input "
                         f"{export['input']}; output {export['output']}; "
                         f"{export['bytes'] / 1e6:.1f} MB; "
                         f"{export['latency_ms']['median']:.1f} ms per image (median, one "
                         f"thread).")
        else:
            lines.append(f"{file}: NOT shipped: " + "; ".join(export["reasons"]) + ".")
    return "\n".join(lines) + "\n"


def _push(model: str, model_root: str, extras) -> str:
    try:
        artifacts.makedirs(model_root)
        if artifacts.remote(model_root):  # no lock file to share there: one root pushes at a
            return _copy_in(model, model_root, extras)  # time (README, "Beyond one machine")
        with artifacts.lock(artifacts.join(model_root, artifacts.PUSH_LOCK)):  # other roots push
            return _copy_in(model, model_root, extras)
    except Exception as e:
        import tensorflow as tf

        if not isinstance(e, (OSError, tf.errors.OpError)):  # object storage says OpError
            raise
        why = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e).split(":")[0]
        raise UserError(f"Could not push the model into {model_root}: {why}. "
                        f"Check that the serving directory is writable and has space; the "
                        f"versions already there are untouched.") from None


def _copy_in(model: str, model_root: str, extras) -> str:
    for stale in artifacts.listdir(model_root):  # left by an interrupted push
        if stale.startswith(artifacts.STAGING):
            artifacts.remove(artifacts.join(model_root, stale))
    newest = max(serving.versions(model_root), default=0)
    if newest and serving.model_content(artifacts.join(model_root, newest)) == \
            serving.model_content(model):
        return artifacts.join(model_root, newest)  # pushed already (by a run that died before
        #                                            recording it)
    if artifacts.remote(model_root):  # copied straight into place: a folder past the newest
        for name in artifacts.listdir(model_root):  # version is a push that was interrupted
            if name.isdigit() and int(name) > newest:
                artifacts.remove(artifacts.join(model_root, name))
        target = artifacts.join(model_root, newest + 1)
        extras(target, newest + 1)  # before saved_model.pb, which makes the version count
        artifacts.copy_tree(model, target, last=artifacts.SAVED_MODEL)
        return target
    version = newest + 1
    while artifacts.exists(artifacts.join(model_root, version)):  # never replace a version,
        version += 1                                               # nor a half-copied one
    target = artifacts.join(model_root, version)
    partial = artifacts.staging_path(target)
    try:
        artifacts.copy_tree(model, partial, last=artifacts.SAVED_MODEL)
        extras(partial, version)
        artifacts.flush(Path(partial))
    except BaseException:  # a full disk, say: give the space back, leave no half model behind
        artifacts.remove(partial)
        raise
    artifacts.publish(partial, target)
    return target
