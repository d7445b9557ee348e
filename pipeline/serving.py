"""The serving directory as TF Serving lays it out: <serving_dir>/<model_name>/<version>/."""
import re
from pathlib import Path

from pipeline.errors import UserError

_VERSION = re.compile(r"[0-9]{1,18}")  # what TF Serving reads as a version; "١" is not one


def versions(model_root: Path) -> list[int]:
    """Complete versions only: a folder named by an integer that holds saved_model.pb."""
    if not model_root.is_dir():
        return []
    return sorted(int(p.name) for p in model_root.iterdir()
                  if _VERSION.fullmatch(p.name) and (p / "saved_model.pb").is_file())


def latest(serving_dir: str | Path, model_name: str) -> Path | None:
    """The model now serving: the newest complete version, or None before the first push."""
    found = versions(Path(serving_dir) / model_name)
    return Path(serving_dir) / model_name / str(found[-1]) if found else None


def load(model_dir: str | Path):
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
