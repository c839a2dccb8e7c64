"""A small Keras classifier for hello-tf: 20 features, 3 classes."""

import tensorflow as tf

FEATURES, CLASSES = 20, 3


def TFNet() -> tf.keras.Model:  # noqa: N802 - named like NVFlare's example model
    model = tf.keras.Sequential(
        [
            tf.keras.Input(shape=(FEATURES,)),
            tf.keras.layers.Dense(32, activation="relu", name="hidden"),
            tf.keras.layers.Dense(CLASSES, name="logits"),
        ]
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(0.01),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model
