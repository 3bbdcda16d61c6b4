"""The old recipe, for comparison only: Flask's dev server, model loaded at import,
``model.predict()`` per request. Run: python bench/peer_flask_predict.py PORT [RELEASE_DIR]"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import numpy as np
from flask import Flask, jsonify, request
from PIL import Image

# The release: argv[2], else FUNFLEET_MODEL_DIR (what the benchmark sets), else the digits model.
DEFAULT = os.environ.get("FUNFLEET_MODEL_DIR") or Path(__file__).resolve().parents[1] / "files/models/digits/1"
RELEASE = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(DEFAULT)
META = json.loads((RELEASE / "metadata.json").read_text())["input"]
model = keras.saving.load_model(RELEASE / "model.keras", compile=False)
app = Flask(__name__)


@app.post("/predict")
def predict():
    img = Image.open(io.BytesIO(request.files["image"].read())).convert("RGB")
    img = img.resize((META["width"], META["height"]))
    x = np.asarray(img, dtype=np.float32)[None] * META["scale"] + META["offset"]
    probs = model.predict(x, verbose=0)[0]
    return jsonify(best_prediction=str(int(probs.argmax())))


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
