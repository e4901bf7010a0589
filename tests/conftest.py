import os


# Keep BLAS from oversubscribing the 2 CI cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import equinox as eqx
import equinox.internal as eqxi
import jax
import pytest


jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def getkey():
    return eqxi.GetKey()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    # Every XLA:CPU executable holds memory mappings; the suite compiles thousands of programs,
    # and one process would exceed Linux's default vm.max_map_count (65,530) and crash inside
    # the compiler. Dropping the compilation caches after each module frees them.
    yield
    eqx.clear_caches()
    jax.clear_caches()
