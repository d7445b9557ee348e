"""FER training pipeline: orchestration, configuration and the FER CSV format."""
import atexit
import os
import sys
import warnings

# Keep a user's terminal readable: TensorFlow's C++ start-up chatter (including
# harmless "Unable to register cuDNN factory" errors on machines without a GPU)
# and the Google client libraries' deprecation notices say nothing about this
# pipeline. TF_CPP_MIN_LOG_LEVEL=0 in the environment brings TensorFlow's back.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google(\.|$)")
# The same notices from the processes Beam starts (--direct_running_mode=multi_processing).
os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")


@atexit.register
def _quiet_exit():
    """TensorFlow 2.16's AtomicFunction.__del__ fails once the interpreter has torn down module
    globals (its refcount table is None by then), printing "Exception ignored" tracebacks after
    any script that still holds a tf.data dataset or a model, such as the TensorFlow Datasets
    snippet of the README. The process is ending: those refcounts no longer matter."""
    atomic = sys.modules.get("tensorflow.python.eager.polymorphic_function.atomic_function")
    if atomic is not None:
        atomic.AtomicFunction.__del__ = lambda self: None
