"""FER training pipeline: orchestration, configuration and the FER CSV format."""
import os
import warnings

# Keep a user's terminal readable: TensorFlow's C++ start-up chatter (including
# harmless "Unable to register cuDNN factory" errors on machines without a GPU)
# and the Google client libraries' deprecation notices say nothing about this
# pipeline. TF_CPP_MIN_LOG_LEVEL=0 in the environment brings TensorFlow's back.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google(\.|$)")
