"""The naive peer: a FastAPI app as most tutorials write it, for comparison only.

A global model loaded at import, and an ``async`` handler that calls ``model.predict`` on
one image per request, on the event loop, with no batching.

    python bench/naive_peer.py MODEL.keras IMAGE_SIZE PORT
"""

import os
import sys

import keras
import numpy as np
import uvicorn
from fastapi import FastAPI, File, UploadFile

sys.path.insert(0, ".")
_ONEDNN = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
from app.data.images import load_image  # noqa: E402
from app.nets import transfer  # noqa: E402, F401  (registers our layers for loading)

# A tutorial's app runs TensorFlow's own defaults, not the oneDNN switch that importing
# convserve sets (`app/__init__.py`).
if _ONEDNN is None:
    os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)

MODEL_PATH, SIZE, PORT = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = keras.saving.load_model(MODEL_PATH, compile=False)
app = FastAPI()


@app.get("/readyz")
async def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/predict")
async def predict(file: UploadFile = File(...)) -> dict[str, object]:
    x = load_image(await file.read(), SIZE).astype(np.float32)[None]
    probs = model.predict(x, verbose=0)[0]
    return {"index": int(np.argmax(probs)), "score": float(np.max(probs))}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
