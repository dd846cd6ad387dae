import os

# Kernels use both cores unless a test says otherwise; set before TVM's thread pool starts.
os.environ.setdefault("TVM_NUM_THREADS", "2")
