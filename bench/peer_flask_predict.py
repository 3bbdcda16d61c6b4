"""The old recipe, for comparison only: Flask's dev server, model loaded at import,
``model.predict()`` per request. Run: python bench/peer_flask_predict.py PORT"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import numpy as np
from flask import Flask, jsonify, request
from PIL import Image

MODEL = Path(__file__).resolve().parents[1] / "files" / "models" / "digits" / "1" / "model.keras"
model = keras.saving.load_model(MODEL, compile=False)
app = Flask(__name__)


@app.post("/predict")
def predict():
    img = Image.open(io.BytesIO(request.files["image"].read())).convert("RGB").resize((32, 32))
    probs = model.predict(np.asarray(img, dtype=np.float32)[None] / 255.0, verbose=0)[0]
    return jsonify(best_prediction=str(int(probs.argmax())))


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
