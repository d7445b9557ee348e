"""SchemaGen: the schema the data is validated against.

TFDV infers a schema from the train statistics on every run and stores it for
review (inferred_schema.pbtxt). Once schemas/schema.pbtxt exists, that curated
schema is the authority and is what downstream components use: inference only
describes the data it saw, the curated schema says what data must look like.

Output layout (output_dir):
    schema.pbtxt            the schema in force (the curated one, or the inferred one, with the
                            label's domain set from the classes of the ingestion config)
    inferred_schema.pbtxt   what TFDV inferred from this run's train split
"""
from pathlib import Path

import tensorflow_data_validation as tfdv
from google.protobuf import text_format

from pipeline.artifact_types import SCHEMA
from pipeline.config import LABEL_FEATURE
from pipeline.errors import UserError


def run(train_statistics: str, output_dir: str, curated: str | None,
        classes: tuple[str, ...]) -> tuple[str, bool]:
    """Write the schema in force to output_dir; return its path and whether it is the curated one.
    The label's domain is the ingestion config's classes, whatever the curated file says: the
    classes are stated once (a dataset with an 8th class needs no schema edit)."""
    inferred = tfdv.infer_schema(tfdv.load_stats_binary(train_statistics),
                                 infer_feature_shape=True)
    tfdv.write_schema_text(inferred, SCHEMA.path(output_dir, "inferred"))
    is_curated = curated is not None
    schema = load_curated(curated) if is_curated else inferred
    label = tfdv.get_feature(schema, LABEL_FEATURE)
    label.int_domain.min, label.int_domain.max = 0, len(classes) - 1
    label.int_domain.is_categorical = True
    path = SCHEMA.path(output_dir, "schema")
    tfdv.write_schema_text(schema, path)
    return path, is_curated


def load_curated(path: str | Path):
    """The curated schema, or a UserError that says where it is broken."""
    try:
        return tfdv.load_schema_text(str(path))
    except text_format.ParseError as e:
        raise UserError(f"The curated schema {path} is not a valid Schema text proto ({e}). Fix "
                        f"the line named, or restore it with git checkout -- {path}.") from None
