"""The hand-tuned peer, for comparison only: what an expert writes by hand for one Keras image
model under uWSGI (master, lazy-apps, one worker per core, one TensorFlow thread a worker, the
model's compiled call, Pillow's draft decode), behind nginx with uwsgi_pass. No metrics, no
logs, no checks beyond what a prediction needs. Model: FUNFLEET_MODEL_DIR (a release folder)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import numpy as np
import tensorflow as tf
from flask import Flask, Response, request
from PIL import Image

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
RELEASE = Path(os.environ["FUNFLEET_MODEL_DIR"])
META = json.loads((RELEASE / "metadata.json").read_text())["input"]
LABELS = json.loads((RELEASE / "labels.json").read_text())
SIZE = (META["width"], META["height"])
model = keras.saving.load_model(RELEASE / "model.keras", compile=False)
call = tf.function(lambda x: model(x, training=False)).get_concrete_function(
    tf.TensorSpec([None, META["height"], META["width"], 3], tf.float32)
)
call(tf.zeros([1, META["height"], META["width"], 3]))
app = Flask(__name__)


@app.post("/predict")
def predict() -> Response:
    img = Image.open(io.BytesIO(request.files["image"].read()))
    img.draft("RGB", (SIZE[0] * 2, SIZE[1] * 2))
    x = np.asarray(img.convert("RGB").resize(SIZE, Image.Resampling.BILINEAR), dtype=np.float32)
    probs = call(tf.constant(x[None] * META["scale"] + META["offset"])).numpy()[0]
    return Response(json.dumps({"best_prediction": LABELS[int(probs.argmax())]}), mimetype="application/json")
