import pytest

from pipeline.config import IngestConfig


@pytest.fixture
def config() -> IngestConfig:
    """The shipped ingestion config (schemas/ingest.json)."""
    return IngestConfig.load()
