"""The seed CNN for 48x48 grayscale faces, exactly as specified (ARCHITECTURE.md), with its input
scaling.

The model takes raw pixel values 0-255 and standardises each image itself (first layer: zero mean,
unit variance per face), so training, evaluation and every serving signature feed the same numbers
and cannot disagree about normalisation. Per-image standardisation is the usual FER2013
preprocessing (Tang, "Deep Learning using Linear Support Vector Machines", 2013, the winner of the
ICML 2013 FER challenge, subtracts each image's mean and fixes its norm): faces differ far more in
lighting and contrast than in expression. Without it the seed CNN sat at chance for most of the
built-in data's epoch budget on one seed in three (BENCHMARKS.md).

Keras here is tf_keras (Keras 2, the one TFX and TFMA build on): Keras 3's model.fit fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585), which scaling out across machines needs.
"""
import os

import tensorflow as tf
import tf_keras as keras
from tensorflow.python.autograph.core import config as _autograph
from tf_keras import layers
# The layer the functional API wraps a TensorFlow op in; tf_keras exports no public name for it.
from tf_keras.src.layers.core.tf_op_layer import TFOpLambda

# AutoGraph leaves Keras' own code alone by its module name, and TensorFlow 2.16 knows only
# `keras`: tf_keras (the same Keras 2 code, renamed) is rewritten function by function on first
# use, about 150 functions and 10-15 s of AST work in every process that trains, and each
# train/test/predict function then traces slower. Later TensorFlow releases list tf_keras beside
# keras; this adds it where it is missing. Our own functions and layers are converted as before
# (a tf.function's own function always is; Keras converts each layer's call).
if not any(rule.matches("tf_keras") for rule in _autograph.CONVERSION_RULES
           if isinstance(rule, _autograph.DoNotConvert)):
    _autograph.CONVERSION_RULES = (*_autograph.CONVERSION_RULES,
                                   _autograph.DoNotConvert("tf_keras"))

# (filters, kernel, dropout) per convolution block; block 1 has two convolutions.
_CONV_BLOCKS = (((32, 3), (64, 3)), 0.025), (((128, 5),), 0.25), (((512, 3),), 0.25), \
    (((256, 3),), 0.25)
_DENSE = ((256, 0.3), (512, 0.3))


def StandardizeImage(name: str = "standardize") -> layers.Layer:
    """Each image to zero mean and unit variance (tf.image.per_image_standardization; a flat
    image is only centred), as a built-in Keras layer: TFOpLambda, the layer Keras' functional
    API makes of a TensorFlow op, records the op by its public name
    ("image.per_image_standardization"). So a saved model.keras loads in any process with
    tf_keras.models.load_model alone, in safe mode: a layer class of our own would need this
    module imported first, as tf_keras 2.16 resolves a functional model's layers by registered
    name only (a Lambda layer would need safe_mode=False, for its pickled Python code)."""
    return TFOpLambda(tf.image.per_image_standardization, name=name)


@keras.utils.register_keras_serializable(package="fer", name="StandardizeImage")
class LegacyStandardizeImage(layers.Layer):
    """The layer models saved before the built-in one carry (registered as fer>StandardizeImage):
    their model.keras files load once this module is imported. Same computation, no weights, so
    a checkpoint of either model fits the other."""

    def call(self, images):
        return tf.image.per_image_standardization(images)


def save_trained(model: keras.Model, path: str) -> None:
    """model.keras, made in a local folder and copied to `path` as every artifact is: Keras'
    own write to object storage left no object there (measured with the GCS emulator)."""
    import tempfile

    from pipeline import artifacts

    with tempfile.TemporaryDirectory(prefix="fer-keras-") as local:
        made = os.path.join(local, os.path.basename(str(path)))
        model.save(made)
        artifacts.copy_file(made, path)


def load_trained(path: str) -> keras.Model:
    """A model.keras the Trainer saved (save_trained; on any filesystem), in Keras' safe mode:
    a layer that carries Python code (a Lambda's marshalled function) is refused, never run.
    Only the .keras format honours safe mode, so nothing else is read."""
    import tempfile

    from pipeline import artifacts

    if not str(path).endswith(".keras"):
        raise ValueError(f"not a .keras model file: {path}")
    with tempfile.TemporaryDirectory(prefix="fer-keras-") as local:
        copy = os.path.join(local, os.path.basename(str(path)))
        artifacts.copy_file(path, copy)
        return keras.models.load_model(copy, compile=False, safe_mode=True)


def build_cnn(image_size: int, num_classes: int, batch_norm_momentum: float = 0.99) -> keras.Model:
    """The seed architecture: four conv blocks, two dense blocks, softmax over the classes.

    batch_norm_momentum: Keras' default 0.99 averages the batch statistics over about 100 steps.
    The Trainer does not rely on that average: it recomputes the statistics for the final weights
    before every evaluation and the export (components.trainer.PopulationBatchNorm).
    """
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = StandardizeImage(name="standardize")(inputs)
    for block, (convs, dropout) in enumerate(_CONV_BLOCKS, start=1):
        for filters, kernel in convs:
            x = layers.Conv2D(filters, kernel, padding="same", activation="relu")(x)
        x = layers.BatchNormalization(momentum=batch_norm_momentum)(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    for units, dropout in _DENSE:
        x = layers.Dense(units, activation="relu")(x)
        x = layers.BatchNormalization(momentum=batch_norm_momentum)(x)
        x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="fer_seed_cnn")


def compile_cnn(model: keras.Model, learning_rate) -> None:
    """Adam, categorical cross-entropy on one-hot labels, accuracy. learning_rate: a number or
    a schedule (keras.optimizers.schedules.LearningRateSchedule)."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
