"""FER training pipeline: orchestration, configuration and the FER CSV format."""
import atexit
import logging
import os
import sys
import warnings

# TFMA's notices that say nothing to the user: its "support for TF 2.0 is in beta" (the pinned
# TFMA 0.47 is the release built for TF 2.16) and TensorFlow's deprecation note about the
# tf_record_iterator TFMA's own writer calls.
_NOTICES = ("TFMA support for TF 2.0 is currently in beta", "tf_record_iterator")
_QUIET = {  # logger: level; what these say at WARNING is not the user's to act on
    "apache_beam.io.tfrecordio": logging.ERROR,  # no python-snappy: a slower CRC, nothing more
    "apache_beam.runners.common": logging.CRITICAL,  # a failing step's traceback, before the
    #                                                  error itself is explained in one paragraph
    "apache_beam.runners.portability.local_job_service": logging.ERROR,  # workers' start-up
    "apache_beam.options.pipeline_options": logging.ERROR,  # unknown flags: refused by run.py
}


def quiet() -> None:
    """Keep a user's terminal readable; each command calls it first (importing the package
    changes nothing). TensorFlow's C++ start-up chatter (including harmless "Unable to register
    cuDNN factory" errors on machines without a GPU; TF_CPP_MIN_LOG_LEVEL=0 in the environment
    brings it back), the Google client libraries' deprecation notices (also in the processes
    Beam starts), and the loggers of _QUIET."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google(\.|$)")
    # Beam's glob-to-regex reads an escaped "[" ("faces[[]1].csv", a name taken as it is) as a
    # possible nested set; the match is right.
    warnings.filterwarnings("ignore", message="Possible nested set", category=FutureWarning)
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(level)
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).addFilter(
            lambda record: not any(n in record.getMessage() for n in _NOTICES))


@atexit.register
def _quiet_exit():
    """TensorFlow 2.16's AtomicFunction.__del__ fails once the interpreter has torn down module
    globals (its refcount table is None by then), printing "Exception ignored" tracebacks after
    any script that still holds a tf.data dataset or a model, such as the TensorFlow Datasets
    snippet of the README. The process is ending: those refcounts no longer matter."""
    atomic = sys.modules.get("tensorflow.python.eager.polymorphic_function.atomic_function")
    if atomic is not None:
        atomic.AtomicFunction.__del__ = lambda self: None
