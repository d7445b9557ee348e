"""Configuration is data: JSON files under schemas/, loaded and checked here."""
import dataclasses
import json
import math
import os
import re
from pathlib import Path

from pipeline.errors import UserError

def _defaults_dir() -> Path:
    """The shipped configuration: the checkout's schemas/ (an editable install), else the copy
    installed with the package."""
    checkout = Path(__file__).resolve().parent.parent / "schemas"
    return checkout if (checkout / "ingest.json").is_file() else Path(__file__).parent / "schemas"


SCHEMAS_DIR = _defaults_dir()


def config_path(name: str) -> Path:
    """The file a run uses for config file `name` when no flag names one: $FER_SCHEMAS_DIR/<name>
    if that folder holds it (it need hold only the files a user changed), else the shipped one."""
    override = os.environ.get("FER_SCHEMAS_DIR")
    if override and (Path(override) / name).exists():
        return Path(override) / name
    return SCHEMAS_DIR / name

# The tf.Example features ExampleGen writes and every later component reads.
LABEL_FEATURE, PIXELS_FEATURE = "emotion", "pixels"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # safe as one folder name


def load_json(name: str, path: str | Path | None = None) -> dict:
    """Read one config file (default: schemas/<name>), with a readable error if it is broken."""
    given = path is not None
    path = Path(path) if given else config_path(name)
    try:
        return json.loads(path.read_text())
    except (IsADirectoryError, UnicodeDecodeError):
        raise UserError(f"Config file {path} is not a text file of JSON. Pass a JSON file.") \
            from None
    except FileNotFoundError:
        how = ("Pass an existing file" if given else
               f"Restore it from the repository (git checkout -- schemas/{name})")
        raise UserError(f"Config file {path} does not exist. {how}.") from None
    except json.JSONDecodeError as e:
        raise UserError(f"Config file {path} is not valid JSON ({e.msg} at line {e.lineno}, "
                        f"column {e.colno}). Fix the file and run again.") from None


def refuse(what: str, problems: list[str], verdict: str = "is inconsistent") -> None:
    if problems:
        raise UserError(f"{what} {verdict}: " + "; ".join(problems) + ".")


# ---------------------------------------------------------------------------------------------
# What each entry of each config file may hold, as data: one spec per entry, bounds included, so
# adding an entry to a file means adding its spec here (a file with an entry its spec does not
# name is refused). One function per spec kind checks it; the config classes below add only the
# checks that relate entries to each other or to other files.

def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # bool is an int


class _Spec:
    def describe(self) -> str:
        """What the entry must be, as a noun phrase ("a whole number >= 1 and <= 10")."""
        raise NotImplementedError

    def problems(self, name: str, value) -> list[str]:
        """Why `value` does not fit, one sentence part per problem, each naming the entry `name`
        and the value given ([] when it fits)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Whole(_Spec):
    """A whole number from low to high (true/false is not one, nor is 2.0)."""

    low: int
    high: int
    note: str = ""  # appended to the description: why, or the bounds in words

    def describe(self) -> str:
        if self.low == self.high:
            return f"{self.low}{self.note}"
        return f"a whole number >= {self.low} and <= {self.high}{self.note}"

    def problems(self, name, value):
        if isinstance(value, int) and not isinstance(value, bool) and (
                self.low <= value <= self.high):
            return []
        return [f"{name} must be {self.describe()} (got {value!r})"]


@dataclasses.dataclass(frozen=True)
class Number(_Spec):
    """A number in an interval; open_low/open_high leave that end out."""

    low: float
    high: float
    open_low: bool = False
    open_high: bool = False
    noun: str | None = None  # "a probability": "must be a probability in (0, 0.5)"
    note: str = ""

    def interval(self) -> str:
        return (f"{'(' if self.open_low else '['}{self.low}, "
                f"{self.high}{')' if self.open_high else ']'}")

    def describe(self) -> str:
        return f"{self.noun or 'a number'} in {self.interval()}{self.note}"

    def problems(self, name, value):
        if _is_number(value) and (self.low < value if self.open_low else self.low <= value) and (
                value < self.high if self.open_high else value <= self.high):
            return []  # NaN fails every comparison, and the bounds are finite: so is the value
        if self.noun:
            return [f"{name} must be {self.describe()} (got {value!r})"]
        return [f"{name} must lie in {self.interval()}{self.note} (got {value!r})"]


@dataclasses.dataclass(frozen=True)
class Flag(_Spec):
    def describe(self) -> str:
        return "true or false"

    def problems(self, name, value):
        return [] if isinstance(value, bool) else [f"{name} must be true or false (got {value!r})"]


@dataclasses.dataclass(frozen=True)
class Text(_Spec):
    """A string of min_len to max_len characters; with `pattern`, one that matches it (`words`
    says which)."""

    max_len: int = 200
    pattern: re.Pattern | None = None
    words: str = ""
    min_len: int = 1

    def describe(self) -> str:
        return self.words or (f"a{' non-empty' if self.min_len else ''} string of at most "
                              f"{self.max_len} characters")

    def problems(self, name, value):
        if isinstance(value, str) and self.min_len <= len(value) <= self.max_len and (
                self.pattern is None or self.pattern.fullmatch(value)):
            return []
        if self.pattern is not None and isinstance(value, str):
            return [f"{name} {value!r} must be {self.describe()}"]
        return [f"{name} must be {self.describe()} (got {value!r})"]


@dataclasses.dataclass(frozen=True)
class OneOf(_Spec):
    choices: tuple

    def describe(self) -> str:
        words = [json.dumps(c) for c in self.choices]
        return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else words[0]

    def problems(self, name, value):
        ok = isinstance(value, str) and value in self.choices
        return [] if ok else [f"{name} must be {self.describe()} (got {value!r})"]


@dataclasses.dataclass(frozen=True)
class ListOf(_Spec):
    """A list of low to high items (`what` names them), each fitting `item`; told as one
    sentence about the whole list."""

    item: _Spec
    low: int
    high: int
    what: str
    distinct: bool = False

    def describe(self) -> str:
        size = self.low if self.low == self.high else f"{self.low} to {self.high}"
        return (f"a list of {size} {'distinct ' if self.distinct else ''}{self.what}, each "
                f"{self.item.describe()}")

    def problems(self, name, value):
        if isinstance(value, (list, tuple)) and self.low <= len(value) <= self.high and not (
                self.distinct and len(set(map(repr, value))) < len(value)) and not any(
                self.item.problems(name, v) for v in value):
            return []
        return [f"{name} must be {self.describe()} (got {value!r})"]


@dataclasses.dataclass(frozen=True)
class MapOf(_Spec):
    """An object of low to high entries with any names (`what` names them), each value fitting
    `value`."""

    value: _Spec
    low: int
    high: int
    what: str

    def describe(self) -> str:
        return f"an object of {self.low} to {self.high} {self.what}"

    def problems(self, name, value):
        if not isinstance(value, dict) or not self.low <= len(value) <= self.high:
            return [f"{name} must be {self.describe()} (got {value!r})"]
        return [p for key, item in value.items()
                for p in self.value.problems(f"{name}.{key}", item)]


@dataclasses.dataclass(frozen=True)
class Obj(_Spec):
    """An object with exactly these entries. With `summary` (a predicate in which {entry} stands
    for that entry's description), any problem inside is told as one sentence about the whole."""

    fields: dict
    summary: str | None = None

    def describe(self) -> str:
        return f"an object with the entries {', '.join(self.fields)}"

    def missing_and_unknown(self, value: dict) -> tuple[list[str], list[str]]:
        return sorted(set(self.fields) - set(value)), sorted(set(value) - set(self.fields))

    def entry_problems(self, value: dict, prefix: str = "") -> list[str]:
        return [p for key, spec in self.fields.items() if key in value
                for p in spec.problems(prefix + key, value[key])]

    def problems(self, name, value):
        if not isinstance(value, dict):
            problems = [f"{name} must be {self.describe()} (got {value!r})"]
        else:
            missing, unknown = self.missing_and_unknown(value)
            problems = [f"{name} must have exactly the entries {', '.join(self.fields)} "
                        f"(missing: {missing or 'none'}; unknown: {unknown or 'none'})"
                        ] if missing or unknown else []
            problems += self.entry_problems(value, f"{name}.")
        if problems and self.summary:
            described = {key: spec.describe() for key, spec in self.fields.items()}
            return [f"{name} {self.summary.format(**described)} (got {value!r})"]
        return problems

    def at(self, path: str) -> _Spec | None:
        """The spec of entry `path` ("section.key" inside an object entry), or None."""
        head, _, rest = path.partition(".")
        spec = self.fields.get(head)
        if rest:
            return spec.at(rest) if isinstance(spec, Obj) else None
        return spec


_JSON_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "true or false",
               int: "a number", float: "a number", type(None): "null"}


def _load_file(spec: Obj, name: str, label: str, path: str | Path | None,
               verdict: str = "is inconsistent") -> tuple[dict, str | Path]:
    """(config file `name`'s entries, where it came from: `path`, else the default file). A file
    that is not a JSON object with exactly spec's entries, each fitting its spec, is refused with
    one UserError naming the file, each entry at fault, the value given and what is allowed."""
    where = path or config_path(name)
    raw = load_json(name, path)
    if not isinstance(raw, dict):
        raise UserError(f"{label} config {where} must hold one JSON object ({{\"entry\": value, "
                        f"...}}), not {_JSON_KINDS.get(type(raw), type(raw).__name__)}. Compare "
                        f"it with the copy in the repository.")
    missing, unknown = spec.missing_and_unknown(raw)
    if missing or unknown:
        raise UserError(f"{label} config {where} does not have the expected entries "
                        f"(missing: {missing or 'none'}; unknown: {unknown or 'none'}). "
                        f"Compare it with the copy in the repository.")
    refuse(f"{label} config {where}", spec.entry_problems(raw), verdict)
    return raw, where


def _with_flags(cfg, label: str, flags: dict | None):
    """cfg with the values of the flags given ({"--flag": (entry, value or None)}), checked again:
    the file passed its check, so what fails now is the flags' doing and they are named."""
    given = {flag: (entry, value) for flag, (entry, value) in (flags or {}).items()
             if value is not None}
    if not given:
        return cfg
    cfg = dataclasses.replace(cfg, **dict(given.values()))
    problems = cfg.problems()
    if problems:
        named = ", ".join(f"{flag} {value}" for flag, (_, value) in given.items())
        raise UserError(f"The flag(s) {named} do not fit the {label} configuration: "
                        + "; ".join(problems) + ". Pass another value.")
    return cfg


# The side of the images. The seed CNN (components/model.py) would build for other sides, but the
# built-in faces and pipeline.predict's face crops (pipeline/faces.py) and photos are 48x48,
# FER2013's size, so a model of another side could not serve them.
IMAGE_SIZE = 48
_FRACTION = Number(0, 1, open_high=True)   # of an image, for augmentation
_SPLIT_NAMES = Text(64, min_len=0)  # which names may be splits: IngestConfig.problems
_COLUMN = Text(64)

INGEST = Obj({
    "classes": ListOf(Text(64), 2, 1000, "class names", distinct=True),
    "image_size": Whole(IMAGE_SIZE, IMAGE_SIZE,
                        note=", the side the model, the built-in faces and pipeline.predict's "
                             "crops are made for"),
    "columns": Obj({"label": _COLUMN, "pixels": _COLUMN, "usage": _COLUMN}),
    "usage_to_split": MapOf(_SPLIT_NAMES, 1, 100, "Usage values, each naming a split"),
    "hash_split": MapOf(Number(0, 1), 1, 100, "split shares"),
    # The split the Trainer fits (and skew, drift and the data page compare against) and the one
    # it watches for early stopping; the Evaluator's split is evaluation.json's.
    "split_roles": Obj({"train": _SPLIT_NAMES, "eval": _SPLIT_NAMES}),
    "max_bad_row_fraction": Number(0, 1),
    "chunk_bytes": Whole(1 << 10, 1 << 30, note=" (1 KiB to 1 GiB)"),
    "records_per_shard": Whole(1, 10_000_000),
    # A valid row of 2304 pixels takes about 9.3 KB at most (4 bytes a pixel, and the label and
    # Usage); a shorter limit would quarantine valid rows.
    "max_line_bytes": Whole(1 << 16, 1 << 26, note=" (64 KiB to 64 MiB)"),
    "quarantine_row_chars": Whole(100, 1 << 20),
})

# The whole numbers of epochs a run may train, also the Tuner's epochs per trial and the
# built-in data's budget.
_EPOCHS = Whole(1, 10_000)

TRAINER = Obj({
    "seed": Whole(0, 2**31 - 1),
    "epochs": _EPOCHS,
    "batch_size": Whole(1, 65_536),
    "learning_rate": Number(0, 1, open_low=True, open_high=True),
    "warmup_epochs": Whole(0, 10_000),
    "final_learning_rate_fraction": Number(0, 1, open_low=True),
    "batch_norm_momentum": Number(0, 1, open_high=True),
    "batch_norm_population_images": Whole(0, 10_000_000),
    "early_stopping": Obj({"monitor": OneOf(("val_loss", "val_accuracy")),
                           "patience": Whole(0, 10_000)}),
    "augmentation": Obj({"horizontal_flip": Flag(), "shift": _FRACTION, "rotation": _FRACTION,
                         "zoom": _FRACTION},
                        summary="needs horizontal_flip ({horizontal_flip}) and shift, rotation, "
                                "zoom, each {shift}"),
    "class_weight": OneOf(("balanced", "sqrt", "none")),
    "warm_start": Obj({"learning_rate_factor": Number(0, 1, open_low=True)},
                      summary="needs learning_rate_factor, {learning_rate_factor}: the share of "
                              "learning_rate used when starting from the serving model"),
    "shuffle_buffer": Whole(1, 10_000_000),
    "cache_max_bytes": Whole(0, 1 << 40, note=" (up to 1 TiB; 0 caches nothing)"),
    "deterministic": Flag(),
})


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """How FER CSV rows become examples: columns, classes, splits and bad-row limits."""

    classes: tuple[str, ...]
    image_size: int
    label_column: str
    pixels_column: str
    usage_column: str
    usage_to_split: dict[str, str]
    hash_split: dict[str, float]
    split_roles: dict[str, str]
    max_bad_row_fraction: float
    chunk_bytes: int
    records_per_shard: int
    max_line_bytes: int
    quarantine_row_chars: int

    @property
    def n_pixels(self) -> int:
        return self.image_size * self.image_size

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.hash_split)

    @property
    def train_split(self) -> str:
        return self.split_roles["train"]

    @property
    def eval_split(self) -> str:
        return self.split_roles["eval"]

    @classmethod
    def load(cls, path: str | Path | None = None, flags: dict | None = None) -> "IngestConfig":
        """The file's config (default: schemas/ingest.json), then flags {"--flag": (entry,
        value or None)} over it; a bad value is blamed on the file or flag that holds it."""
        raw, where = _load_file(INGEST, "ingest.json", "Ingestion", path)
        columns = raw["columns"]
        cfg = cls(
            classes=tuple(raw["classes"]),
            image_size=raw["image_size"],
            label_column=columns["label"],
            pixels_column=columns["pixels"],
            usage_column=columns["usage"],
            usage_to_split=dict(raw["usage_to_split"]),
            hash_split={k: float(v) for k, v in raw["hash_split"].items()},
            split_roles=dict(raw["split_roles"]),
            max_bad_row_fraction=float(raw["max_bad_row_fraction"]),
            **{name: raw[name] for name in ("chunk_bytes", "records_per_shard",
                                            "max_line_bytes", "quarantine_row_chars")})
        refuse(f"Ingestion config {where}", cfg.problems())
        return _with_flags(cfg, "ingestion", flags)

    def as_json(self) -> dict:
        """The entries of ingest.json this config is made of."""
        entries = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for column in ("label", "pixels", "usage"):
            entries.setdefault("columns", {})[column] = entries.pop(f"{column}_column")
        return {**entries, "classes": list(self.classes)}

    def problems(self) -> list[str]:
        problems = INGEST.entry_problems(self.as_json())
        if problems:  # the checks below assume the entries' kinds
            return problems
        targets = set(self.usage_to_split.values())
        if targets != set(self.hash_split):
            problems.append(f"usage_to_split must map onto exactly the splits of hash_split "
                            f"({', '.join(self.hash_split)}) (got {self.usage_to_split})")
        if not math.isclose(sum(self.hash_split.values()), 1.0, abs_tol=1e-6):
            problems.append(f"hash_split ratios must sum to 1 (got {self.hash_split})")
        columns = self.as_json()["columns"]
        if len({c.lower() for c in columns.values()}) < 3:  # the header's case is ignored
            problems.append(f"columns must name three different columns (got {columns})")
        roles = self.split_roles
        if not set(roles.values()) <= set(self.hash_split) or roles["train"] == roles["eval"]:
            problems.append(f"split_roles must name two different splits of hash_split "
                            f"({', '.join(self.hash_split)}) (got {roles})")
        bad = [s for s in self.hash_split if not _NAME.fullmatch(s)]
        if bad:  # each split becomes a folder Split-<name>
            problems.append(f"split names {bad} must be 1-64 letters, digits, '_', '.' or '-'")
        return problems


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Hyperparameters of the Trainer (schemas/trainer.json); --epochs and --batch-size override."""

    seed: int
    epochs: int
    batch_size: int
    learning_rate: float
    warmup_epochs: int
    final_learning_rate_fraction: float
    batch_norm_momentum: float
    batch_norm_population_images: int
    early_stopping: dict
    augmentation: dict
    class_weight: str
    warm_start: dict
    shuffle_buffer: int
    cache_max_bytes: int
    deterministic: bool

    @classmethod
    def load(cls, path: str | Path | None = None, flags: dict | None = None) -> "TrainerConfig":
        """As IngestConfig.load, from schemas/trainer.json."""
        raw, where = _load_file(TRAINER, "trainer.json", "Trainer", path)
        cfg = cls(**raw)
        refuse(f"Trainer config {where}", cfg.problems())
        return _with_flags(cfg, "trainer", flags)

    def _with(self, values: dict) -> "TrainerConfig":
        changes = {}
        for name, value in values.items():
            field, _, key = name.partition(".")
            changes[field] = {**changes.get(field, getattr(self, field)), key: value} if key \
                else value
        return dataclasses.replace(self, **changes)

    def tuned(self, values: dict) -> "TrainerConfig":
        """This config with the Tuner's values ("section.key" sets one key of an object entry)."""
        tuned = self._with(values)
        refuse("The Tuner's best hyperparameters", tuned.problems())
        return tuned

    def problems(self) -> list[str]:
        return TRAINER.entry_problems({f.name: getattr(self, f.name)
                                       for f in dataclasses.fields(self)})


# What the Evaluator computes, and so the only metrics a gate may name.
GATED_METRICS = ("accuracy", "macro_accuracy", "class_accuracy")


class _Gates(_Spec):
    """floors or max_drop_vs_serving: per metric of GATED_METRICS a bound in [0, 1], per class
    for class_accuracy (the class names are checked against the ingestion config's)."""

    bound = Number(0, 1, noun="a number")

    def describe(self) -> str:
        return f"an object giving bounds for some of {', '.join(GATED_METRICS)}"

    def problems(self, name, value):
        if not isinstance(value, dict):
            return [f"{name} must be {self.describe()} (got {value!r})"]
        problems = []
        for metric, gate in value.items():
            if metric not in GATED_METRICS:
                problems.append(f"{name} names the metric {metric!r}, which the Evaluator "
                                f"does not compute (it computes {', '.join(GATED_METRICS)})")
                continue
            per_class = metric == "class_accuracy"
            if per_class != isinstance(gate, dict):
                problems.append(f"{name}.{metric} must be " + (
                    'an object {"default": x, "<class>": y}' if per_class else "a number")
                    + f" (got {gate!r})")
                continue
            for label, bound in (gate if per_class else {"": gate}).items():
                problems += self.bound.problems(f"{name}.{metric}{'.' + label if label else ''}",
                                                bound)
        return problems


EVALUATION = Obj({
    "model_name": Text(pattern=_NAME, words="1-64 letters, digits, '_', '.' or '-'"),
    "split": _SPLIT_NAMES,
    "confidence": Number(0.5, 1, open_high=True, note=", e.g. 0.95"),
    "min_class_examples": Whole(1, 10_000_000),
    "min_examples": Whole(0, 10_000_000),
    "max_earlier_runs": Whole(0, 1000),
    "floors": _Gates(),
    "max_drop_vs_serving": _Gates(),
    "export_parity": Obj({"accuracy": Number(0, 1), "class_accuracy": Number(0, 1)},
                         summary="needs accuracy and class_accuracy, each {accuracy}: how far "
                                 "an on-device export's accuracy may fall from the SavedModel's"),
})


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """The gates a model must pass to be pushed (schemas/evaluation.json).

    floors: lowest value allowed; max_drop_vs_serving: largest drop allowed against the model now
    serving. Both name accuracy (top-1), macro_accuracy (mean of the per-class values) and
    class_accuracy (per class: the share of its examples whose top-1 prediction is that class),
    the latter per class name with a "default" for the classes not named. Each is judged on the
    evidence: a floor fails only when the whole `confidence` interval lies below it, a drop only
    when it exceeds the allowed one and its paired interval lies wholly below 0, and
    a class with fewer than min_class_examples examples is not judged. The examples: the
    evaluation split of this run's data and, until there are min_examples of them, of the data
    of earlier validated runs (newest first, at most max_earlier_runs).

    export_parity: how far an on-device export (TFLite float32, int8) may fall below the
    SavedModel on the same split, overall and in each class judged (min_class_examples): an
    export shown to be further behind (the paired interval wholly below 0, as for a drop) is
    not shipped with the version.
    """

    model_name: str
    split: str
    confidence: float
    min_class_examples: int
    min_examples: int
    max_earlier_runs: int
    floors: dict
    max_drop_vs_serving: dict
    export_parity: dict  # {"accuracy": d, "class_accuracy": d}: see Exporter

    @classmethod
    def load(cls, classes, splits, path: str | Path | None = None) -> "EvaluationConfig":
        raw, where = _load_file(EVALUATION, "evaluation.json", "Gating", path, "is wrong")
        cfg = cls(**raw)
        cfg.check(classes, splits, where)
        return cfg

    def bound(self, section: str, metric: str, class_name: str | None = None) -> float | None:
        value = getattr(self, section).get(metric)
        if isinstance(value, dict):
            return value.get(class_name, value.get("default"))
        return value

    def check(self, classes, splits, where) -> None:
        """A gate on something never computed would fail every model: refuse it now."""
        problems = EVALUATION.entry_problems({f.name: getattr(self, f.name)
                                              for f in dataclasses.fields(self)})
        if not problems:
            if self.split not in splits:
                problems.append(f"split {self.split!r} is not one of the splits "
                                f"{', '.join(splits)}")
            for section in ("floors", "max_drop_vs_serving"):
                for name in getattr(self, section).get("class_accuracy", {}):
                    if name not in (*classes, "default"):
                        problems.append(f"{section}.class_accuracy names the class {name!r}; "
                                        f"the classes are {', '.join(classes)} (or default)")
        refuse(f"Gating config {where}", problems, "is wrong")


DEPLOYMENT = Obj({
    "infra_validation": Obj({
        "timeout_seconds": Whole(10, 86_400, note=" (10 s to a day)"),
        "memory_limit_mib": Whole(1024, 1 << 20, note=" (1 GiB to 1 TiB of address space)"),
        "canary_examples": Whole(1, 10_000),
        "tolerance": Number(0, 0.1, open_low=True, noun="a number",
                            note=": the largest difference allowed between a probability "
                                 "served and the Trainer's"),
        "latency_requests": Whole(1, 100_000),
    }),
    "exports": Obj({
        "representative_images": Whole(1, 100_000),
        "latency_requests": Whole(1, 100_000),
    }),
})


@dataclasses.dataclass(frozen=True)
class DeploymentConfig:
    """How a candidate is checked for serving and made for devices (schemas/deployment.json).

    infra_validation: the InfraValidator loads the candidate in a process of its own, bounded
    to memory_limit_mib of address space and timeout_seconds, sends canary_examples test
    examples through each serving signature, requires every probability within `tolerance` of
    the Trainer's own, and times latency_requests requests of batch 1 and of batch 32.
    exports: the Exporter calibrates the int8 model on representative_images training
    images and times latency_requests single-image calls of each export."""

    infra_validation: dict
    exports: dict

    @classmethod
    def load(cls, path: str | Path | None = None) -> "DeploymentConfig":
        raw, _ = _load_file(DEPLOYMENT, "deployment.json", "Deployment", path)
        return cls(**raw)


def _search_space(spec) -> bool:
    """Whether spec is {"choices": [...]} or {"low": a, "high": b, "log": false}."""
    if not isinstance(spec, dict):
        return False
    if set(spec) == {"choices"}:
        choices = spec["choices"]
        return isinstance(choices, list) and 1 <= len(choices) <= 1000 and all(
            isinstance(c, (str, int, float)) for c in choices)
    return ({"low", "high"} <= set(spec) <= {"low", "high", "log"}
            and _is_number(spec["low"]) and _is_number(spec["high"])
            and spec["low"] < spec["high"] and isinstance(spec.get("log", False), bool)
            and (not spec.get("log") or spec["low"] > 0))


class _Search(_Spec):
    """The Tuner's parameters: Trainer hyperparameters (a trainer.json entry, or "section.key"
    inside one), each with its search space; each value it can give is checked against the
    Trainer's bounds by TunerConfig.check."""

    def describe(self) -> str:
        return "an object naming at least one hyperparameter"

    def problems(self, name, value):
        if not isinstance(value, dict) or not value:
            return [f"{name} must name at least one hyperparameter (got {value!r})"]
        problems = []
        for parameter, spec in value.items():
            if not isinstance(TRAINER.at(parameter), (Whole, Number, Flag, OneOf)):
                problems.append(f"{name} names {parameter!r}, which is not a hyperparameter of "
                                f"trainer.json (an entry, or \"section.key\" for a key inside "
                                f"an entry that is an object, e.g. \"augmentation.shift\")")
            elif not _search_space(spec):
                problems.append(f"{name}.{parameter} must be {{\"choices\": [...]}} or "
                                f"{{\"low\": a, \"high\": b}} with a < b, and optionally "
                                f"\"log\": true or false (true needs a > 0) (got {spec!r})")
        return problems


TUNER = Obj({"epochs_per_trial": _EPOCHS, "parameters": _Search()})


@dataclasses.dataclass(frozen=True)
class TunerConfig:
    """The Tuner's search (schemas/tuner.json): epochs per trial and, per Trainer hyperparameter
    (a trainer.json entry, or "section.key" inside one such as "augmentation.shift"), either
    {"choices": [...]} or a range {"low": a, "high": b, "log": false}; whole-number bounds give
    whole numbers."""

    epochs_per_trial: int
    parameters: dict

    @classmethod
    def load(cls, path: str | Path | None = None,
             trainer: TrainerConfig | None = None) -> "TunerConfig":
        """The search of the file (default: schemas/tuner.json); with `trainer`, the config the
        trials start from, each value the search can give is checked against its bounds."""
        raw, where = _load_file(TUNER, "tuner.json", "Tuner", path)
        cfg = cls(**raw)
        cfg.check(where, trainer)
        return cfg

    def check(self, where, trainer: TrainerConfig | None = None) -> None:
        problems = TUNER.entry_problems({"epochs_per_trial": self.epochs_per_trial,
                                         "parameters": self.parameters})
        for name, spec in (self.parameters.items() if trainer and not problems else ()):
            # The ends of a range and every choice: the bounds are intervals, so what lies
            # between the ends fits when they do.
            ends = {"choices": spec["choices"]} if "choices" in spec else {
                "low": [spec["low"]], "high": [spec["high"]]}
            refused = next(((key, value, found[0]) for key, values in ends.items()
                            for value in values if (found := trainer._with({name: value})
                                                    .problems())), None)
            if refused:
                key, value, problem = refused
                given = f"{spec[key]!r} hold" if key == "choices" else "is"
                problems.append(f"parameters.{name}.{key} {given} {value!r}, which the Trainer "
                                f"refuses: {problem}")
        refuse(f"Tuner config {where}", problems)


_ANOMALY_CHECKS = ("schema", "skew", "drift", "missing_class")
_PIXEL = Number(0, 255)

VALIDATION = Obj({
    "exposure": Obj({name: _PIXEL for name in ("dark_mean_below", "bright_mean_above",
                                                "flat_contrast_below", "saturated_value_margin")},
                    summary="needs dark_mean_below, bright_mean_above, flat_contrast_below and "
                            "saturated_value_margin, each {dark_mean_below}"),
    "on_anomaly": Obj({name: OneOf(("stop", "warn")) for name in _ANOMALY_CHECKS},
                      summary=f"must set each of {', '.join(_ANOMALY_CHECKS)} to {{schema}}"),
    "skew_against_train": ListOf(_SPLIT_NAMES, 0, 100, "split names", distinct=True),
    "drift_split": _SPLIT_NAMES,
    "significance_level": Number(0, 0.5, open_low=True, open_high=True, noun="a probability",
                                 note=": how unlikely a difference must be under sampling alone "
                                      "to count"),
})


def load_validation(splits, path: str | Path | None = None, train: str = "train") -> dict:
    """The ExampleValidator's policy (schemas/validation.json), checked against the splits and
    the train split's name (ingest.json's split_roles)."""
    policy, where = _load_file(VALIDATION, "validation.json", "Validation", path)
    problems = []
    skew = policy["skew_against_train"]
    if not set(skew) <= set(splits) - {train}:
        problems.append(f"skew_against_train must list splits other than the train split "
                        f"{train} (the splits are {', '.join(splits)}; got {skew!r})")
    if policy["drift_split"] not in splits:
        problems.append(f"drift_split must be one of the splits {', '.join(splits)} "
                        f"(got {policy['drift_split']!r})")
    refuse(f"Validation config {where}", problems)
    return policy


_COUNT = Whole(0, 100_000_000)

DEFAULT_DATA = Obj({
    "rows": Whole(100, 1_000_000),
    "seed": Whole(0, 2**32 - 1),
    "fer2013_train_class_counts": ListOf(_COUNT, 7, 7, "counts, one per FER2013 class the "
                                                       "built-in faces draw"),
    "usage_counts": MapOf(_COUNT, 1, 100, "counts, one per Usage value"),
    "epochs": _EPOCHS,
})


def load_default_data(ingest: IngestConfig) -> dict:
    """The built-in data's recipe (schemas/default_data.json), checked against the ingestion
    config that will read it."""
    spec, where = _load_file(DEFAULT_DATA, "default_data.json", "Built-in data", None)
    problems = []
    counts, usage = spec["fer2013_train_class_counts"], spec["usage_counts"]
    if not sum(counts):
        problems.append(f"fer2013_train_class_counts must hold a count above 0 (got {counts})")
    if len(counts) > len(ingest.classes):
        problems.append(f"fer2013_train_class_counts gives {len(counts)} classes, more than the "
                        f"{len(ingest.classes)} of the ingestion config (got {counts})")
    if not sum(usage.values()):
        problems.append(f"usage_counts must hold a count above 0 (got {usage})")
    unknown = sorted(set(usage) - set(ingest.usage_to_split))
    if unknown:
        problems.append(f"usage_counts names {unknown}, which the ingestion config's "
                        f"usage_to_split does not map to a split (got {usage})")
    refuse(f"Built-in data config {where}", problems)
    return spec


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every configuration a run uses, resolved once from the files under schemas/ (or the
    files the flags name) and the flags, each checked before any work starts."""

    ingest: IngestConfig
    trainer: TrainerConfig
    evaluation: EvaluationConfig
    validation: dict
    schema: str | None      # the curated TFDV schema (None: none yet, TFDV's inferred one is used)
    tuner: TunerConfig | None
    tune: int
    deployment: DeploymentConfig


def add_flags(parser) -> None:
    """The flags that choose or change configuration: the same for pipeline.run and for the
    Trainer's worker entry (components.trainer), so both resolve the same Settings."""
    parser.add_argument(
        "--data", metavar="PATH_OR_GLOB",
        help="FER CSV input: one file, a directory of shards, or a quoted glob; plain or gzip; "
             "local or any filesystem Beam knows (gs://...). Default: built-in synthetic faces, "
             "generated once under the pipeline root, with their own epoch budget "
             "(schemas/default_data.json).")
    parser.add_argument(
        "--ingest-config", metavar="FILE",
        help="ingestion config (default: schemas/ingest.json): columns, classes, split ratios")
    parser.add_argument(
        "--max-bad-rows", metavar="FRACTION", type=float,
        help="largest share of invalid rows tolerated before ExampleGen stops the run "
             "(default from the ingestion config: 0.01); invalid rows are quarantined either way")
    parser.add_argument(
        "--trainer-config", metavar="FILE",
        help="hyperparameters (default: schemas/trainer.json): learning-rate schedule, batch "
             "size, batch-norm statistics, augmentation, class weighting, early stopping, warm "
             "start, seed")
    parser.add_argument(
        "--epochs", metavar="N", type=int,
        help="most training epochs (early stopping may end sooner); default from the trainer "
             "config, or the built-in data's budget")
    parser.add_argument(
        "--batch-size", metavar="N", type=int,
        help="global batch size, split across devices and workers; default from the trainer "
             "config")
    parser.add_argument(
        "--tune", metavar="N", type=int, default=0,
        help="before training, try N hyperparameter settings (Optuna) from the search space of "
             "--tuner-config and train with the best; 0 (default) skips the Tuner")
    parser.add_argument(
        "--tuner-config", metavar="FILE",
        help="the Tuner's search space and epochs per trial (default: schemas/tuner.json)")
    parser.add_argument(
        "--validation-config", metavar="FILE",
        help="the ExampleValidator's policy (default: schemas/validation.json): stop or warn per "
             "check, the splits compared, the significance level that separates a real change "
             "from sampling noise, exposure thresholds")
    parser.add_argument(
        "--schema", metavar="FILE",
        help="the curated TFDV schema every split is validated against (default: "
             "schemas/schema.pbtxt): domains, presence, skew and drift thresholds")
    parser.add_argument(
        "--evaluation-config", metavar="FILE",
        help="the gates a model must pass to be pushed (default: schemas/evaluation.json): "
             "floors for overall, macro and per-class accuracy, largest drop against the "
             "serving model, model name, evaluation split, export parity")
    parser.add_argument(
        "--deployment-config", metavar="FILE",
        help="how a candidate is checked for serving and exported for devices (default: "
             "schemas/deployment.json): the InfraValidator's time limit, memory bound, canary "
             "requests and tolerance; the TFLite int8 calibration set")


def resolve(args) -> Settings:
    """Settings from the flags of add_flags: flags over files over schemas/. The built-in data
    (no --data) brings its own epoch budget unless --trainer-config or --epochs is given."""
    ingest = IngestConfig.load(args.ingest_config,
                               {"--max-bad-rows": ("max_bad_row_fraction", args.max_bad_rows)})
    trainer = TrainerConfig.load(args.trainer_config)
    if not args.data:
        budget = load_default_data(ingest)["epochs"]
        if not args.trainer_config:
            trainer = dataclasses.replace(trainer, epochs=budget)
    trainer = _with_flags(trainer, "trainer", {"--epochs": ("epochs", args.epochs),
                                               "--batch-size": ("batch_size", args.batch_size)})
    if not 0 <= args.tune <= 10_000:
        raise UserError(f"--tune takes a number of trials from 0 to 10000 (got {args.tune}).")
    schema = Path(args.schema) if args.schema else config_path("schema.pbtxt")
    if args.schema and not schema.is_file():
        raise UserError(f"Schema file {schema} (--schema) does not exist. Pass an existing "
                        f"file, a TFDV Schema in text form.")
    return Settings(
        ingest=ingest, trainer=trainer,
        evaluation=EvaluationConfig.load(ingest.classes, ingest.splits, args.evaluation_config),
        validation=load_validation(ingest.splits, args.validation_config, ingest.train_split),
        schema=str(schema.resolve()) if schema.is_file() else None,
        tuner=TunerConfig.load(args.tuner_config, trainer) if args.tune else None,
        tune=args.tune,
        deployment=DeploymentConfig.load(args.deployment_config))
