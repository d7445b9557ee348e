"""FER training pipeline: orchestration, configuration and the FER CSV format."""
import os
import warnings

# Keep a user's terminal readable: TensorFlow's C++ start-up chatter and the
# Google client libraries' deprecation notices say nothing about this pipeline.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google(\.|$)")
