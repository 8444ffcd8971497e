"""The seed CNN, exactly as ARCHITECTURE.md gives it.

BatchNormalization uses momentum 0.9 instead of Keras' 0.99: on a small library (a new
station, the demo, the tests) training runs only a few dozen steps, and with 0.99 the
moving statistics used at inference lag so far behind the batch statistics that the
model predicts at chance while training accuracy looks perfect.
"""

from __future__ import annotations

import keras
from keras import layers

BATCHNORM_MOMENTUM = 0.9
DROPOUT = 0.5


def build_model(n_classes: int, input_shape: tuple[int, int, int] = (129, 98, 1)) -> keras.Model:
    """The seed CNN for (freqs, frames, 1) clips -> softmax over `n_classes` genres."""
    inputs = keras.Input(shape=input_shape, name="clips")
    x = layers.Conv2D(16, 3, activation="relu")(inputs)
    x = layers.BatchNormalization(momentum=BATCHNORM_MOMENTUM)(x)
    x = layers.Conv2D(16, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.BatchNormalization(momentum=BATCHNORM_MOMENTUM)(x)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(DROPOUT)(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="genre")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")
