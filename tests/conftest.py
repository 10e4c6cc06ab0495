import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", max_examples=500, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Generated Triton kernels run in Triton's interpreter on machines without a GPU.  Set before any
# test imports triton (the decorator reads it).
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    # pytest-xdist's workers share the machine's cores: one torch thread pool per core between
    # them, not one per core each (two workers of two threads on two cores made small torch ops,
    # e.g. a plan's kept_pairs, up to ten times slower while the other worker ran)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
except ImportError:  # pragma: no cover
    pass

import sys
sys.path.insert(0, os.path.dirname(__file__))

if os.environ.get("TRITON_INTERPRET") == "1":
    import interpreter_patches

    interpreter_patches.install()
