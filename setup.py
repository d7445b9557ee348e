"""Install the FER pipeline. Every direct dependency is pinned here, and only here.

The set below resolves in a few minutes on Python 3.11 (left unpinned, pip
backtracks for a long time through TFX's dependency graph). requirements.lock holds
the whole resolved set, indirect dependencies included, each with its hashes: it is
generated from this file by tools/lock, never edited by hand, and it is what the
README's install commands and CI install (tests/test_package.py checks that the two agree).
"""
from setuptools import find_packages, setup

PINS = [
    "tensorflow==2.16.2",
    "keras==3.15.1",
    "tf-keras==2.16.0",
    "tensorflow-data-validation==1.16.1",
    "tensorflow-model-analysis==0.47.1",
    "tfx-bsl==1.16.1",
    "tensorflow-metadata==1.16.1",
    "apache-beam[gcp]==2.61.0",
    "tensorflow-datasets==4.9.6",
    "importlib_resources==7.1.0",  # imported by tensorflow-datasets 4.9.6, not declared by it
    "ml-metadata==1.16.0",
    "numpy==1.26.4",
    "pandas==1.5.3",
    "matplotlib==3.11.2",
    "scipy==1.17.1",  # the validation's and the gates' tests and intervals (also TFMA's)
    "optuna==4.5.0",  # the Tuner (--tune)
    # Face detection for pipeline.predict: the cascades' weights ship inside the wheel.
    "opencv-python-headless==4.10.0.84",
    # ONNX, the third export beside TFLite's two: the newest onnx (1.23) is built for protobuf
    # 5, which TensorFlow 2.16 excludes; 1.17 and onnxruntime 1.20 work with its protobuf 4.25.
    "tf2onnx==1.17.0",
    "onnx==1.17.0",
    "onnxruntime==1.20.1",
    "pillow==13.0.0",  # predict's image decoding: size from the header, EXIF, GIF/WebP/TIFF/CMYK
    # pkg_resources, which TensorBoard's command line imports (`tensorboard --logdir`): gone
    # from setuptools 81, a warning at every import from 80.9.
    "setuptools==80.8.0",
]

setup(
    name="fer-pipeline",
    version="0.1.0",
    description="TFX-style training pipeline for facial-expression recognition (FER2013 CSV)",
    python_requires="==3.11.*",
    packages=[*find_packages(include=["pipeline", "pipeline.*", "components", "components.*"]),
              "pipeline.schemas"],
    # The configuration travels with the package (a wheel, a Dataflow worker): schemas/ is
    # installed as pipeline/schemas/; a checkout keeps using its own schemas/ (pipeline.config).
    package_dir={"pipeline.schemas": "schemas"},
    package_data={"pipeline.schemas": ["*.json", "*.pbtxt"]},
    install_requires=PINS,
    extras_require={"test": ["pytest==9.2.0",
                             "gcp-storage-emulator==2026.7.19"],  # gs:// in tests (tests/gcs.py)
                    "bench": ["scikit-learn==1.6.1"]},  # bench/quality.py's real digit images
)
