"""FER2013 as a TensorFlow Datasets builder, split exactly as the pipeline splits it.

The real dataset cannot be downloaded automatically, so the builder reads the
CSV (or several shards, plain or gzip) from TFDS's manual directory:

    import tensorflow_datasets as tfds
    import pipeline.fer2013_tfds  # registers 'fer2013'
    ds = tfds.load('fer2013', split='train', data_dir=DATA_DIR,
                   download_and_prepare_kwargs={'download_config':
                       tfds.download.DownloadConfig(manual_dir=CSV_DIR)})

Rows are parsed and split by pipeline.fer_csv, the same code ExampleGen uses:
Usage Training/PublicTest/PrivateTest -> train/validation/test, and the
content-hash split for files without Usage. Invalid rows are skipped and
counted in the log; ExampleGen's quarantine lists them one by one.
"""
from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from pipeline import fer_csv
from pipeline.config import IngestConfig
from pipeline.errors import UserError

# TFDS split name for each pipeline split.
_TFDS_SPLITS = {"train": "train", "eval": "validation", "test": "test"}


class Fer2013(tfds.core.GeneratorBasedBuilder):
    """FER2013: 48x48 grayscale faces labelled with one of seven emotions."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Splits and row validation shared with the pipeline's ExampleGen."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put fer2013.csv (columns emotion,pixels,Usage; or several .csv/.csv.gz shards) in the "
        "manual directory, e.g. ~/tensorflow_datasets/downloads/manual/.")

    def _info(self) -> tfds.core.DatasetInfo:
        config = IngestConfig.load()
        size = config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(size, size, 1)),
                "label": tfds.features.ClassLabel(names=list(config.classes)),
            }),
            supervised_keys=("image", "label"),
            homepage="https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge",
        )

    def _split_generators(self, dl_manager):
        manual = dl_manager.manual_dir
        files = sorted(str(p) for p in manual.iterdir()
                       if p.name.endswith((".csv", ".csv.gz")) and not p.name.startswith("."))
        if not files:
            raise UserError(f"No .csv or .csv.gz file in the TFDS manual directory {manual}. "
                            f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        return {name: self._generate_examples(files, split)
                for split, name in _TFDS_SPLITS.items()}

    def _generate_examples(self, files, split):
        config = IngestConfig.load()
        skipped = 0
        for path in files:
            f, _ = fer_csv.open_binary(path)
            with f:
                layout, _ = fer_csv.read_header(f, path, config)
                for number, _, row in fer_csv.read_rows(f, 2, None, layout, config):
                    if isinstance(row, str):
                        skipped += 1
                    elif row is not None and row[0] == split:
                        _, label, pixels = row
                        image = pixels.astype(np.uint8).reshape(
                            config.image_size, config.image_size, 1)
                        yield f"{path}:{number}", {"image": image, "label": label}
        if skipped:
            logging.warning("fer2013 %s: skipped %d invalid rows; run ExampleGen to see each "
                            "row's reason in its quarantine.", split, skipped)
