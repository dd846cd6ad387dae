"""The CUDA backend: build.py (targets, dlight schedules, the device-code check, nvcc, the library), intrin.py
(tensor-core intrinsics), bundle.py (tuning without RPC: candidates built here, measured on the GPU machine by
measure.py, which needs only TVM's runtime)."""
