"""`eqx.filter_jit` with the XLA compiler options of curax's solver programs.

XLA:CPU compiles each fused kernel through its MLIR fusion emitters by default, about 10 ms
more per kernel than its other emitters. curax's K = infinity solvers and certificates (the
Nash master, `stable_point`, `fixed_point` of a curation map, `stability`,
`mixing_fixed_point`, `nash_optimize`) are compile-bound on a CPU: a few hundred small kernels
that run in milliseconds. They are compiled with `xla_cpu_use_fusion_emitters=False` and
compile about twice as fast, running as fast (benchmarks/RESULTS_compile.md). A call with a
finite-K problem anywhere in its arguments keeps XLA's defaults: there the quadrature kernels'
code generation dominates the compile, which the option leaves about as long, and their code
ran 5-10% slower with it. So do the maps and the samplers (not compiled through here), whose
run time grows with n and the number of rounds.

The options only touch curax's own top-level programs: called under a transformation (the
user's `jit`, `vmap`, `grad`, or curax's own), a program is inlined into the enclosing one,
which keeps its options (JAX refuses options on a nested `jit`). `CURAX_XLA_DEFAULT_OPTIONS=1`
(read at the first call) gives XLA's defaults, and so does an XLA that does not know the
option: one tiny compile before the first real one detects that, never a failing user call.
"""

import functools
import os
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ._problem import CurationProblem


try:  # no public name: whether this call is under a JAX transformation
    from jax._src.core import trace_state_clean
except ImportError:  # a JAX that moved it: always XLA's defaults, never an error

    def trace_state_clean() -> bool:
        return False


_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
_ENV = "CURAX_XLA_DEFAULT_OPTIONS"


@functools.cache
def compiler_options() -> dict[str, Any]:
    """The XLA options of curax's compiled programs (empty: XLA's defaults)."""
    if os.environ.get(_ENV, "") not in ("", "0"):
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=_OPTIONS).lower(np.float32(0)).compile()
    except Exception:  # an XLA (or backend) that does not know the option
        return {}
    return dict(_OPTIONS)


def _finite_k(tree: Any) -> bool:
    """Whether a finite-K curation problem is among the leaves of `tree`."""
    is_problem = lambda x: isinstance(x, CurationProblem)  # noqa: E731
    leaves = jax.tree.leaves(tree, is_leaf=is_problem)
    return any(is_problem(x) and x.has_finite_k for x in leaves)


class _Jit:
    # Built at the first call, not at import: the options are probed with a compile, and
    # importing curax must not initialise a JAX backend.
    def __init__(self, fn: Callable, when: Callable | None, kwargs: dict[str, Any]):
        self._fn = fn
        self._when = when
        self._kwargs = kwargs
        self._fast = None
        self._plain = None
        functools.update_wrapper(self, fn)

    def _get(self, args: tuple, kwargs: dict):
        fast = trace_state_clean() and not _finite_k((args, kwargs))
        if fast and (self._when is None or self._when(*args, **kwargs)):
            if self._fast is None:
                options = compiler_options() or None
                self._fast = eqx.filter_jit(self._fn, compiler_options=options, **self._kwargs)
            return self._fast
        if self._plain is None:
            self._plain = eqx.filter_jit(self._fn, **self._kwargs)
        return self._plain

    def __call__(self, *args, **kwargs):
        return self._get(args, kwargs)(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._get(args, kwargs).lower(*args, **kwargs)


def filter_jit(fn: Callable | None = None, *, when: Callable | None = None, **kwargs) -> Any:
    """`eqx.filter_jit(fn, **kwargs)` with curax's compiler options (for a solver program),
    for the calls without a finite-K problem in their arguments for which `when(*args,
    **kwargs)` (default: all of them) holds."""
    if fn is None:
        return functools.partial(filter_jit, when=when, **kwargs)
    return _Jit(fn, when, kwargs)
