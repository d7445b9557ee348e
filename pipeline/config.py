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


def refuse(what: str, problems: list[str]) -> None:
    if problems:
        raise UserError(f"{what} is inconsistent: " + "; ".join(problems) + ".")


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


def _from_json(cls, name: str, label: str, path: str | Path | None):
    """(cls built from the entries of config file `name`, where it came from)."""
    where = path or config_path(name)
    try:
        return cls(**load_json(name, path)), where
    except TypeError as e:
        raise UserError(f"{label} config {where} does not have the expected entries ({e}). "
                        f"Compare it with the copy in the repository.") from None


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

    @classmethod
    def load(cls, path: str | Path | None = None, flags: dict | None = None) -> "IngestConfig":
        """The file's config (default: schemas/ingest.json), then flags {"--flag": (entry,
        value or None)} over it; a bad value is blamed on the file or flag that holds it."""
        raw = load_json("ingest.json", path)
        where = path or config_path("ingest.json")
        try:
            cfg = cls(
                classes=tuple(raw["classes"]),
                image_size=int(raw["image_size"]),
                label_column=raw["columns"]["label"],
                pixels_column=raw["columns"]["pixels"],
                usage_column=raw["columns"]["usage"],
                usage_to_split=dict(raw["usage_to_split"]),
                hash_split={k: float(v) for k, v in raw["hash_split"].items()},
                max_bad_row_fraction=float(raw["max_bad_row_fraction"]),
                chunk_bytes=int(raw["chunk_bytes"]),
                records_per_shard=int(raw["records_per_shard"]),
                max_line_bytes=int(raw["max_line_bytes"]),
                quarantine_row_chars=int(raw["quarantine_row_chars"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"Config file {where} is missing or mistypes the entry {e}. "
                            f"Compare it with the copy in the repository.") from None
        refuse(f"Ingestion config {where}", cfg.problems())
        return _with_flags(cfg, "ingestion", flags)

    def problems(self) -> list[str]:
        problems = []
        if set(self.usage_to_split.values()) != set(self.hash_split):
            problems.append("usage_to_split must map onto exactly the splits named in hash_split")
        if any(r < 0 for r in self.hash_split.values()) or not math.isclose(
                sum(self.hash_split.values()), 1.0, abs_tol=1e-6):
            problems.append(f"hash_split ratios must be >= 0 and sum to 1 (got {self.hash_split})")
        if not 0 <= self.max_bad_row_fraction <= 1:
            problems.append(f"max_bad_row_fraction must lie in [0, 1] (got {self.max_bad_row_fraction})")
        if len(self.classes) < 2:
            problems.append("classes must name at least two classes")
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
        raw = load_json("trainer.json", path)
        where = path or config_path("trainer.json")
        fields = {f.name for f in dataclasses.fields(cls)}
        if set(raw) != fields:
            missing, extra = sorted(fields - set(raw)), sorted(set(raw) - fields)
            raise UserError(f"Trainer config {where} does not have the expected entries "
                            f"(missing: {missing or 'none'}; unknown: {extra or 'none'}). "
                            f"Compare it with the copy in the repository.")
        cfg = cls(**raw)
        refuse(f"Trainer config {where}", cfg.problems())
        return _with_flags(cfg, "trainer", flags)

    def tuned(self, values: dict) -> "TrainerConfig":
        """This config with the Tuner's values ("section.key" sets one key of an object entry)."""
        changes = {}
        for name, value in values.items():
            field, _, key = name.partition(".")
            changes[field] = {**changes.get(field, getattr(self, field)), key: value} if key \
                else value
        tuned = dataclasses.replace(self, **changes)
        refuse("The Tuner's best hyperparameters", tuned.problems())
        return tuned

    def problems(self) -> list[str]:
        problems = []
        for name, least in (("epochs", 1), ("batch_size", 1), ("shuffle_buffer", 1),
                            ("warmup_epochs", 0), ("batch_norm_population_images", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                problems.append(f"{name} must be a whole number >= {least} (got {value!r})")
        if not 0 < self.learning_rate < 1:
            problems.append(f"learning_rate must lie in (0, 1) (got {self.learning_rate})")
        if not 0 < self.final_learning_rate_fraction <= 1:
            problems.append(f"final_learning_rate_fraction must lie in (0, 1] "
                            f"(got {self.final_learning_rate_fraction})")
        factor = self.warm_start.get("learning_rate_factor") if isinstance(
            self.warm_start, dict) else None
        if set(self.warm_start or {}) != {"learning_rate_factor"} or not isinstance(
                factor, (int, float)) or not 0 < factor <= 1:
            problems.append("warm_start needs learning_rate_factor, a number in (0, 1]: the "
                            "share of learning_rate used when starting from the serving model")
        if not 0 <= self.batch_norm_momentum < 1:
            problems.append(f"batch_norm_momentum must lie in [0, 1) (got {self.batch_norm_momentum})")
        if self.class_weight not in ("balanced", "sqrt", "none"):
            problems.append(f"class_weight must be \"balanced\", \"sqrt\" or \"none\" "
                            f"(got {self.class_weight!r})")
        if self.early_stopping.get("monitor") not in ("val_loss", "val_accuracy"):
            problems.append("early_stopping.monitor must be \"val_loss\" or \"val_accuracy\"")
        aug = self.augmentation
        if set(aug) != {"horizontal_flip", "shift", "rotation", "zoom"} or not all(
                0 <= aug[k] < 1 for k in ("shift", "rotation", "zoom")):
            problems.append("augmentation needs horizontal_flip (true/false) and shift, rotation, "
                            "zoom as fractions in [0, 1)")
        return problems


# What the Evaluator computes, and so the only metrics a gate may name.
GATED_METRICS = ("accuracy", "macro_accuracy", "class_accuracy")


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
    """

    model_name: str
    split: str
    confidence: float
    min_class_examples: int
    min_examples: int
    max_earlier_runs: int
    floors: dict
    max_drop_vs_serving: dict

    @classmethod
    def load(cls, classes, splits, path: str | Path | None = None) -> "EvaluationConfig":
        cfg, where = _from_json(cls, "evaluation.json", "Gating", path)
        cfg.check(classes, splits, where)
        return cfg

    def bound(self, section: str, metric: str, class_name: str | None = None) -> float | None:
        value = getattr(self, section).get(metric)
        if isinstance(value, dict):
            return value.get(class_name, value.get("default"))
        return value

    def check(self, classes, splits, where) -> None:
        """A gate on something never computed would fail every model: refuse it now."""
        problems = []
        if not _NAME.fullmatch(str(self.model_name)):
            problems.append(f"model_name {self.model_name!r} must be 1-64 letters, digits, '_', "
                            f"'.' or '-'")
        if self.split not in splits:
            problems.append(f"split {self.split!r} is not one of the splits {', '.join(splits)}")
        if not isinstance(self.confidence, (int, float)) or not 0.5 <= self.confidence < 1:
            problems.append(f"confidence must lie in [0.5, 1), e.g. 0.95 (got {self.confidence!r})")
        for name, least in (("min_class_examples", 1), ("min_examples", 0),
                            ("max_earlier_runs", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not (
                    least <= value <= 10_000_000):
                problems.append(f"{name} must be a whole number from {least} to 10000000 "
                                f"(got {value!r})")
        for section in ("floors", "max_drop_vs_serving"):
            for metric, value in getattr(self, section).items():
                if metric not in GATED_METRICS:
                    problems.append(f"{section} names the metric {metric!r}, which the Evaluator "
                                    f"does not compute (it computes {', '.join(GATED_METRICS)})")
                    continue
                per_class = metric == "class_accuracy"
                if per_class != isinstance(value, dict):
                    problems.append(f"{section}.{metric} must be " + (
                        'an object {"default": x, "<class>": y}' if per_class else "a number"))
                    continue
                values = value if per_class else {"": value}
                for name, bound in values.items():
                    if per_class and name not in (*classes, "default"):
                        problems.append(f"{section}.class_accuracy names the class {name!r}; "
                                        f"the classes are {', '.join(classes)} (or default)")
                    if not isinstance(bound, (int, float)) or not 0 <= bound <= 1:
                        problems.append(f"{section}.{metric}{'.' + name if name else ''} must be "
                                        f"a number in [0, 1] (got {bound!r})")
        if problems:
            raise UserError(f"Gating config {where} is wrong: " + "; ".join(problems) + ".")


@dataclasses.dataclass(frozen=True)
class TunerConfig:
    """The Tuner's search (schemas/tuner.json): epochs per trial and, per Trainer hyperparameter
    (a trainer.json entry, or "section.key" inside one such as "augmentation.shift"), either
    {"choices": [...]} or a range {"low": a, "high": b, "log": false}; whole-number bounds give
    whole numbers."""

    epochs_per_trial: int
    parameters: dict

    @classmethod
    def load(cls, path: str | Path | None = None) -> "TunerConfig":
        cfg, where = _from_json(cls, "tuner.json", "Tuner", path)
        cfg.check(where)
        return cfg

    def check(self, where) -> None:
        problems = []
        if not isinstance(self.epochs_per_trial, int) or self.epochs_per_trial < 1:
            problems.append(f"epochs_per_trial must be a whole number >= 1 "
                            f"(got {self.epochs_per_trial!r})")
        known = {f.name: f for f in dataclasses.fields(TrainerConfig)}
        if not isinstance(self.parameters, dict) or not self.parameters:
            problems.append("parameters must name at least one hyperparameter")
        for name, spec in (self.parameters or {}).items() if isinstance(
                self.parameters, dict) else ():
            field = name.split(".")[0]
            if field not in known or (("." in name) != (known[field].type is dict)):
                problems.append(f"parameters names {name!r}, which is not a hyperparameter of "
                                f"trainer.json (an entry, or \"section.key\" for a key inside "
                                f"an entry that is an object, e.g. \"augmentation.shift\")")
            elif not isinstance(spec, dict) or not (
                    (set(spec) == {"choices"} and isinstance(spec["choices"], list)
                     and spec["choices"])
                    or ({"low", "high"} <= set(spec) <= {"low", "high", "log"}
                        and all(isinstance(spec[k], (int, float)) for k in ("low", "high"))
                        and spec["low"] < spec["high"]
                        and (not spec.get("log") or spec["low"] > 0))):
                problems.append(f"parameters.{name} must be {{\"choices\": [...]}} or "
                                f"{{\"low\": a, \"high\": b}} with a < b (and a > 0 with "
                                f"\"log\": true)")
        if problems:
            raise UserError(f"Tuner config {where} is inconsistent: " + "; ".join(problems) + ".")


_ANOMALY_CHECKS = ("schema", "skew", "drift", "missing_class")


def load_validation(splits, path: str | Path | None = None) -> dict:
    """The ExampleValidator's policy (schemas/validation.json), checked against the splits."""
    policy, where = load_json("validation.json", path), path or config_path("validation.json")
    problems = []
    exposure = policy.get("exposure")
    if not isinstance(exposure, dict) or set(exposure) != {
            "dark_mean_below", "bright_mean_above", "flat_contrast_below",
            "saturated_value_margin"} or not all(
            isinstance(v, (int, float)) and 0 <= v <= 255 for v in exposure.values()):
        problems.append("exposure needs dark_mean_below, bright_mean_above, flat_contrast_below "
                        "and saturated_value_margin, each a pixel value in [0, 255]")
    actions = policy.get("on_anomaly")
    if not isinstance(actions, dict) or set(actions) != set(_ANOMALY_CHECKS) or not all(
            a in ("stop", "warn") for a in actions.values()):
        problems.append(f"on_anomaly must set each of {', '.join(_ANOMALY_CHECKS)} to \"stop\" "
                        f"or \"warn\"")
    skew = policy.get("skew_against_train")
    if not isinstance(skew, list) or not set(skew) <= set(splits) - {"train"}:
        problems.append(f"skew_against_train must list splits other than train (the splits "
                        f"are {', '.join(splits)})")
    if policy.get("drift_split") not in splits:
        problems.append(f"drift_split must be one of the splits {', '.join(splits)}")
    level = policy.get("significance_level")
    if not isinstance(level, (int, float)) or isinstance(level, bool) or not 0 < level < 0.5:
        problems.append(f"significance_level must be a probability in (0, 0.5): how unlikely a "
                        f"difference must be under sampling alone to count (got {level!r})")
    extra = sorted(set(policy) - {"exposure", "on_anomaly", "skew_against_train", "drift_split",
                                  "significance_level"})
    if extra:
        problems.append(f"unknown entries {extra}")
    refuse(f"Validation config {where}", problems)
    return policy


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
             "serving model, model name, evaluation split")


def resolve(args) -> Settings:
    """Settings from the flags of add_flags: flags over files over schemas/. The built-in data
    (no --data) brings its own epoch budget unless --trainer-config or --epochs is given."""
    ingest = IngestConfig.load(args.ingest_config,
                               {"--max-bad-rows": ("max_bad_row_fraction", args.max_bad_rows)})
    trainer = TrainerConfig.load(args.trainer_config)
    if not args.data and not args.trainer_config:
        budget = load_json("default_data.json").get("epochs")
        if not isinstance(budget, int) or budget < 1:
            raise UserError(f"Config file {config_path('default_data.json')} must give the "
                            f"built-in data's \"epochs\", a whole number >= 1 (got {budget!r}).")
        trainer = dataclasses.replace(trainer, epochs=budget)
    trainer = _with_flags(trainer, "trainer", {"--epochs": ("epochs", args.epochs),
                                               "--batch-size": ("batch_size", args.batch_size)})
    if args.tune < 0:
        raise UserError(f"--tune takes a number of trials, 0 or more (got {args.tune}).")
    schema = Path(args.schema) if args.schema else config_path("schema.pbtxt")
    if args.schema and not schema.is_file():
        raise UserError(f"Schema file {schema} (--schema) does not exist. Pass an existing "
                        f"file, a TFDV Schema in text form.")
    return Settings(
        ingest=ingest, trainer=trainer,
        evaluation=EvaluationConfig.load(ingest.classes, ingest.splits, args.evaluation_config),
        validation=load_validation(ingest.splits, args.validation_config),
        schema=str(schema.resolve()) if schema.is_file() else None,
        tuner=TunerConfig.load(args.tuner_config) if args.tune else None, tune=args.tune)
