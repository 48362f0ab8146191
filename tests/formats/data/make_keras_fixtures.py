"""Write the small Keras-made fixtures next to this file (needs keras 3; not run by the tests).

    KERAS_BACKEND=torch python tests/formats/data/make_keras_fixtures.py

``keras_small.keras`` (Keras 3 archive) and ``keras_small_legacy.h5`` (``model.save('x.h5')``)
hold one model: Conv2D(3, 3×3) on 6×6×2 inputs → Flatten → Dense(4) → head
Dense(2, no bias). ``keras_small_io.npz`` holds an input batch and Keras's own outputs of the
conv layer and of the whole model, so tests can check that sncli's PyTorch-oriented weights
compute what Keras computed.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    conv = keras.layers.Conv2D(3, 3, name="conv")(inputs)
    hidden = keras.layers.Dense(4, name="fc")(keras.layers.Flatten()(conv))
    outputs = keras.layers.Dense(2, use_bias=False, name="head")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).standard_normal((3, 6, 6, 2)).astype(np.float32)
    model.fit(x, np.zeros((3, 2), np.float32), epochs=1, verbose=0)
    conv_model = keras.Model(inputs, conv)
    np.savez(
        HERE / "keras_small_io.npz",
        x=x,
        conv=conv_model.predict(x, verbose=0),
        y=model.predict(x, verbose=0),
    )
    model.save(HERE / "keras_small.keras")
    model.save(HERE / "keras_small_legacy.h5")


if __name__ == "__main__":
    main()
