import os


# Keep BLAS from oversubscribing the 2 CI cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import equinox.internal as eqxi
import jax
import pytest


jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def getkey():
    return eqxi.GetKey()
