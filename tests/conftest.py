import dataclasses

import pytest

from pipeline.config import IngestConfig


@pytest.fixture
def config() -> IngestConfig:
    """The shipped ingestion config (schemas/ingest.json)."""
    return IngestConfig.load()


@pytest.fixture(scope="session")
def training_examples(tmp_path_factory) -> str:
    """ExampleGen's output for 160 synthetic faces (about 128 train, 16 eval, 16 test), shared by
    the Trainer's and the recipe's tests, which only read it."""
    from tests.helpers import example_gen_output

    return example_gen_output(tmp_path_factory.mktemp("examples"), rows=160, seed=3)


@pytest.fixture(scope="session")
def trained(training_examples, tmp_path_factory):
    """(training.json, output folder) of one 2-epoch training from scratch with the shipped
    recipe at batch size 16 and a 1-epoch warm-up: read, never written, by the tests of
    test_trainer and test_recipe (one training for both files rather than one each)."""
    from components import trainer
    from pipeline.config import TrainerConfig

    out = tmp_path_factory.mktemp("trained") / "trainer"
    config = dataclasses.replace(TrainerConfig.load(), epochs=2, batch_size=16,
                                 warmup_epochs=1)
    return trainer.run(training_examples, str(out), config, IngestConfig.load()), out
