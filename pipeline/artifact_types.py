"""The kinds of artifact the steps pass to one another, each stated once: its ML Metadata type and
the files it holds (in the manner of TFX's standard_artifacts, or a Kedro catalog). A step
declares the kind it produces; a component writes its files, and anyone reads them, through
`path`, so a file's name is typed in exactly one place.

    kind.path(folder, "history")               <folder>/history.csv
    kind.path(folder, "statistics", "train")   <folder>/Split-train/FeatureStats.pb
"""
import typing

from pipeline import artifacts


class ArtifactType(typing.NamedTuple):
    name: str                        # its ML Metadata artifact type
    files: dict[str, str] = {}       # role -> file (or folder) name inside the artifact

    def path(self, folder: str, role: str, split: str | None = None) -> str:
        """Where the artifact in `folder` keeps `role` (per split: in its Split-<split>/)."""
        where = artifacts.split_dir(folder, split) if split is not None else folder
        return artifacts.join(where, self.files[role])


EXAMPLES = ArtifactType("Examples", {"counts": "counts.json", "quarantine": "quarantine"})
STATISTICS = ArtifactType("ExampleStatistics", {  # per split
    "statistics": "FeatureStats.pb", "view": "statistics.html"})
SCHEMA = ArtifactType("Schema", {"schema": "schema.pbtxt", "inferred": "inferred_schema.pbtxt"})
ANOMALIES = ArtifactType("ExampleAnomalies", {"anomalies": "anomalies.json",
                                              "schema_diff": "SchemaDiff.pbtxt"})  # per split
DATA_PAGE = ArtifactType("DataPage", {"page": "data.html"})
HYPERPARAMETERS = ArtifactType("HyperParameters", {"best": "best_hyperparameters.json",
                                                   "trials": "trials.json"})
MODEL = ArtifactType("Model", {
    "serving_model": "serving_model", "keras": "model.keras", "history": "history.csv",
    "summary": "training.json", "logs": "logs", "checkpoints": "checkpoints"})
EVALUATION = ArtifactType("ModelEvaluation", {"evaluation": "evaluation.json", "tfma": "tfma",
                                              "blessed": "BLESSED", "not_blessed": "NOT_BLESSED"})
EXPORTED_MODELS = ArtifactType("ExportedModels", {  # also the layout of a version's exports/
    "float32": "model_float32.tflite", "int8": "model_int8.tflite", "onnx": "model.onnx",
    "exports": "exports.json", "notes": "README.txt"})
INFRA_BLESSING = ArtifactType("InfraBlessing", {
    "result": "infra_blessing.json", "blessed": "INFRA_BLESSED", "not_blessed": "INFRA_NOT_BLESSED",
    "examples": "canary_examples.tfrecord", "requests": "canary_requests.npz",
    "answers": "canary_answers.npz"})
PUSHED_MODEL = ArtifactType("PushedModel", {"record": "pushed.json"})
REPORT = ArtifactType("RunReport", {"page": "report.html"})
# pipeline.infer's output folder (TFX's BulkInferrer makes an InferenceResult).
INFERENCE = ArtifactType("InferenceResult", {"counts": "counts.json", "quarantine": "quarantine"})
# Inputs that no step produces: a file the data came from, a model found serving. A served
# version is a SavedModel (what TF Serving loads; nothing else in the folder counts towards its
# content, serving.model_content) with what the Pusher adds beside it: the exports (TFLite,
# ONNX) that passed their parity gate (exports/, laid out as EXPORTED_MODELS) and the model card.
DATA_FILE = ArtifactType("DataFile")
SERVING_MODEL = ArtifactType("ServingModel", {
    "exports": "exports", "card": "model_card.json", "card_page": "model_card.html"})
