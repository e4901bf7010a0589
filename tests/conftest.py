import os
import shutil
import tempfile
import zlib


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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    # `helpers.default_cases(keep)`: the cases of a parametrised test that run by default (the
    # first `keep` in collection order, or those whose id `keep(id)` accepts); the others are
    # marked `study` (run by CI after the default suite, and by `pytest -m study`). Before the
    # mark plugin deselects, hence tryfirst.
    seen: dict = {}
    for item in items:
        keep = getattr(getattr(item, "function", None), "_default_cases", None)
        if keep is None:
            continue
        key = (item.module.__name__, getattr(item, "originalname", item.name))
        seen[key] = seen.get(key, 0) + 1
        if callable(keep):
            default = keep(item.callspec.id)
        else:
            default = seen[key] <= keep
        if not default:
            item.add_marker(pytest.mark.study)


@pytest.fixture
def getkey(request):
    # Seeded by the test's id: a failure reproduces on rerun (an unseeded GetKey draws a new
    # seed per run, and a statistical bound then fails at random, once in a while).
    return eqxi.GetKey(seed=zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    # Every XLA:CPU executable holds memory mappings; the suite compiles thousands of programs,
    # and one process would exceed Linux's default vm.max_map_count (65,530) and crash inside
    # the compiler. Dropping the compilation caches after each module frees them.
    yield
    eqx.clear_caches()
    jax.clear_caches()
