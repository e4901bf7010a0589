import os
import shutil
import tempfile


# Keep BLAS from oversubscribing the 2 CI cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import equinox as eqx
import equinox.internal as eqxi
import jax
import pytest


jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


def pytest_configure(config):
    # The suite is dominated by XLA compilation, and the same programs recur across test
    # modules (whose in-memory caches are dropped below) and in the examples and the CLI runs:
    # a persistent compilation cache for this run only, one folder per process (JAX writes its
    # entries without a lock, so processes do not share one), removed at the end. Turned off by
    # CURAX_TEST_NO_COMPILATION_CACHE=1 or by the user's own JAX_COMPILATION_CACHE_DIR.
    if os.environ.get("CURAX_TEST_NO_COMPILATION_CACHE", "") not in ("", "0"):
        return
    if jax.config.jax_compilation_cache_dir:
        return
    path = tempfile.mkdtemp(prefix="curax-tests-jax-cache-")
    config.stash[_CACHE_DIR] = path
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    path = config.stash.get(_CACHE_DIR, None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


_CACHE_DIR = pytest.StashKey[str]()


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
