import os

# Kernels use both cores unless a test says otherwise; set before TVM's thread pool starts.
os.environ.setdefault("TVM_NUM_THREADS", "2")
# Fresh runtime memory is filled with NaN bytes (runtime/plan.py HostMemory): a kernel that reads memory it never
# wrote fails its test instead of passing on the zeros of a fresh page.
os.environ.setdefault("TENSORFORGE_POISON_MEMORY", "1")
# Specializations compiled at run time (compiler/specialize.py) are not kept on disk unless a test asks for it.
os.environ.setdefault("TENSORFORGE_CACHE_DIR", "off")
