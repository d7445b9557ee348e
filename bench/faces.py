"""Synthetic faces for the benchmarks: ExampleGen TFRecords made once under bench/.cache/, and the
same images as in-memory numpy arrays (the seed's way of holding them)."""
import dataclasses
from pathlib import Path

import numpy as np

from components import example_gen, trainer
from pipeline import artifacts, default_data
from pipeline.config import IngestConfig, TrainerConfig

CACHE = Path(__file__).resolve().parent / ".cache"


def tfrecords(split: str, images: int, seed: int) -> list[str]:
    """ExampleGen's files for `images` faces, all in `split`."""
    ingest = IngestConfig.load()
    examples = CACHE / f"{split}_examples_{images}_seed{seed}"
    if not artifacts.is_complete(examples):
        print(f"writing {images:,} synthetic faces as TFRecords into {examples} (once) ...")
        csv = default_data.write_csv(CACHE / f"faces_{images}_seed{seed}.csv", images, seed)
        example_gen.run(str(csv), str(examples), dataclasses.replace(
            ingest, usage_to_split={u: split for u in ingest.usage_to_split},
            hash_split={split: 1.0}), [])
        artifacts.mark_complete(examples)
    return artifacts.example_files(examples, split)


def arrays(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """float32 images [N, 48, 48, 1] (0-255) and one-hot labels, read through the Trainer."""
    ingest = IngestConfig.load()
    n = int(trainer._label_counts(files, len(ingest.classes)).sum())
    x, y = zip(*trainer._dataset(files, ingest, TrainerConfig.load(), n, training=False,
                                 cache=False).as_numpy_iterator())
    return np.concatenate(x), np.concatenate(y)
