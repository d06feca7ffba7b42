"""convserve: an image-classification model server."""

import os

# TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI, AVX-VNNI
# or AMX. On an AVX2-only CPU they are still there and much faster than the default ones
# (MobileNetV2 at 224x224 on 2 cores: 10.6 against 18.7 ms per image forward, a head epoch
# on SIGNS 10 against 15-20 s), so they are on wherever this package is imported before
# TensorFlow starts. TF_ENABLE_ONEDNN_OPTS=0 turns them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
