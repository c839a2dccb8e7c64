"""hello-tf's client: NVFlare's TensorFlow client shape, unchanged (weights per layer in, weights per layer out).

Each site holds its own slice of a synthetic classification problem (no download): a fixed linear teacher
labels random features; the sites' slices differ in their feature distribution.
"""

import argparse
import zlib

import numpy as np
import nvflare.client as flare
from model import CLASSES, FEATURES, TFNet


def site_data(site: str, n: int, seed: int = 0):
    teacher = np.random.default_rng(seed).normal(size=(FEATURES, CLASSES))
    rng = np.random.default_rng(zlib.crc32(site.encode()))
    shift = rng.normal(scale=0.5, size=FEATURES)
    x = (rng.normal(size=(n, FEATURES)) + shift).astype(np.float32)
    y = np.argmax(x @ teacher, axis=1).astype(np.int64)
    test = np.random.default_rng(seed + 1).normal(size=(1000, FEATURES)).astype(np.float32)
    return x, y, test, np.argmax(test @ teacher, axis=1).astype(np.int64)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    flare.init()
    site = flare.get_site_name()
    x, y, test_x, test_y = site_data(site, args.samples)
    model = TFNet()
    while flare.is_running():
        input_model = flare.receive()
        for name, weights in input_model.params.items():
            model.get_layer(name).set_weights(weights)
        _, global_accuracy = model.evaluate(test_x, test_y, verbose=0)
        print(f"{site} round {input_model.current_round}: global model accuracy {global_accuracy:.3f}")
        model.fit(x, y, epochs=args.epochs, batch_size=64, verbose=0)
        flare.send(
            flare.FLModel(
                params={layer.name: layer.get_weights() for layer in model.layers},
                params_type="FULL",
                metrics={"accuracy": float(global_accuracy)},
                meta={"NUM_STEPS_CURRENT_ROUND": len(x)},
                current_round=input_model.current_round,
            )
        )


if __name__ == "__main__":
    main()
