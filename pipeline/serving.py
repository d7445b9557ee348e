"""The serving directory as TF Serving lays it out: <serving_dir>/<model_name>/<version>/."""
from pathlib import Path


def versions(model_root: Path) -> list[int]:
    """Complete versions only: a folder named by an integer that holds saved_model.pb."""
    if not model_root.is_dir():
        return []
    return sorted(int(p.name) for p in model_root.iterdir()
                  if p.name.isdigit() and (p / "saved_model.pb").is_file())


def latest(serving_dir: str | Path, model_name: str) -> Path | None:
    """The model now serving: the newest complete version, or None before the first push."""
    found = versions(Path(serving_dir) / model_name)
    return Path(serving_dir) / model_name / str(found[-1]) if found else None
