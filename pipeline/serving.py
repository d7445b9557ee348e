"""The serving directory as TF Serving lays it out: <serving_dir>/<model_name>/<version>/."""
import re

from pipeline import artifacts
from pipeline.errors import UserError

_VERSION = re.compile(r"[0-9]{1,18}")  # what TF Serving reads as a version; "١" is not one


def versions(model_root: str) -> list[int]:
    """Complete versions only: a folder named by an integer that holds saved_model.pb (written
    last, so on object storage too a version counts only once it is whole)."""
    return sorted(int(name) for name in artifacts.listdir(model_root)
                  if _VERSION.fullmatch(name)
                  and artifacts.exists(artifacts.join(model_root, name, artifacts.SAVED_MODEL)))


def latest(serving_dir: str, model_name: str) -> str | None:
    """The model now serving: the newest complete version, or None before the first push."""
    found = versions(artifacts.join(serving_dir, model_name))
    return artifacts.join(serving_dir, model_name, found[-1]) if found else None


def model_content(version: str) -> str | None:
    """The content hash of the SavedModel in a version folder (or a Trainer's serving_model):
    what the Pusher adds beside it (on-device exports, the model card) does not count, so a
    version and the model it was pushed from have the same content."""
    from pipeline.artifact_types import SERVING_MODEL
    from pipeline.metadata import tree_fingerprint

    return tree_fingerprint(version, leave_out=tuple(SERVING_MODEL.files.values()))


def load(model_dir: str):
    """The SavedModel, checked to have this pipeline's serving_default signature; or a UserError
    that says plainly why not (TFMA would fail deep inside Beam, predict with a traceback)."""
    import tensorflow as tf

    try:
        model = tf.saved_model.load(str(model_dir))
        _, inputs = model.signatures["serving_default"].structured_input_signature
        if set(inputs) != {"examples"}:
            raise ValueError(f"its serving_default signature takes {sorted(inputs)}, not the "
                             f"serialized tf.Examples this pipeline's models take")
    except Exception as e:  # whatever the reason, it is the same problem to the user
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(
            f"The model {model_dir} cannot be loaded ({why}). If it is a version in a serving "
            f"directory, move that folder out of it (the newest older version then counts as the "
            f"one serving) or restore a good copy of it.") from None
    return model
