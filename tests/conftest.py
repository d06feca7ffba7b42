import os

# Quiet TensorFlow's start-up chatter in test output; never download weights in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CONVSERVE_PRETRAINED", "none")
