"""The BentoML peer, for comparison only: BentoML's own recipe for an image model with adaptive
batching. An API service decodes each upload and calls a model service whose batchable API
BentoML's dispatcher merges across requests (max 16 images; its window adapts, and a request is
refused only past 1 s). It runs in its own
venv (bench/bench.py makes it), 2 API and 2 model workers, one TF thread each.
Model: FUNFLEET_MODEL_DIR (a release folder). Upload: multipart field ``image``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import bentoml
import numpy as np
from PIL import Image as PILImage

RELEASE = Path(os.environ["FUNFLEET_MODEL_DIR"])
META = json.loads((RELEASE / "metadata.json").read_text())["input"]
LABELS = json.loads((RELEASE / "labels.json").read_text())
SIZE = (META["width"], META["height"])


@bentoml.service(workers=2, traffic={"concurrency": 64})
class Model:
    def __init__(self) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        model = keras.saving.load_model(RELEASE / "model.keras", compile=False)
        self.call = tf.function(lambda x: model(x, training=False)).get_concrete_function(
            tf.TensorSpec([None, META["height"], META["width"], 3], tf.float32)
        )
        self.call(tf.zeros([1, META["height"], META["width"], 3]))

    @bentoml.api(batchable=True, max_batch_size=16, max_latency_ms=1000)
    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.call(images.astype(np.float32)).numpy()


@bentoml.service(workers=2, traffic={"concurrency": 64})
class Api:
    model = bentoml.depends(Model)

    @bentoml.api(route="/predict")
    async def predict(self, image: PILImage.Image) -> dict:
        image.draft("RGB", (SIZE[0] * 2, SIZE[1] * 2))
        x = np.asarray(image.convert("RGB").resize(SIZE, PILImage.Resampling.BILINEAR), dtype=np.float32)
        probs = await self.model.to_async.predict(x[None] * META["scale"] + META["offset"])
        return {"best_prediction": LABELS[int(np.asarray(probs)[0].argmax())]}
