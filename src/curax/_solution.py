from typing import Any, Generic

import equinox as eqx
import jax
import numpy as np
import optimistix as optx
from jaxtyping import Array, PyTree

from ._custom_types import Aux, Y


class RESULTS(optx.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """Result codes of curax's solvers: optimistix's, plus failures specific to curation
    dynamics. A solver running inside `optx.fixed_point` only returns optimistix's members;
    curax's entry points may return any of these.
    """

    left_simplex = (
        "The iterate left the probability simplex (negative entries or mass that does not "
        "sum to 1 beyond tolerance)."
    )
    unstable_fixed_point = (
        "The solver converged to a fixed point that is not stable: some point off its "
        "support has growth factor G > 1, so mass placed there grows. Start from a "
        "full-support distribution or use `curax.ActiveSetNewton`."
    )
    stalled = (
        "The solver stalled: its residual stopped decreasing before reaching the requested "
        "tolerance."
    )
    certificate_failed = (
        "The solver stopped but its optimality certificate (Frank-Wolfe / duality gap) is "
        "above the requested tolerance."
    )
    infeasible = "The bargaining problem has no feasible point above its disagreement point."


class Solution(eqx.Module, Generic[Y, Aux]):
    """The result of a curax solve.

    **Attributes:**

    - `value`: the solution (for curation problems, a distribution of shape `(n,)`).
    - `result`: a [`curax.RESULTS`][] code; `RESULTS.successful` if the solve converged and
        its certificate holds.
    - `aux`: auxiliary output of the function, if any.
    - `stats`: a dict of diagnostics. Always `num_steps` and `max_steps`; solvers add
        what they certify (e.g. `fw_gap`, `potential`, `num_map_evals`, `support_size`).
    - `state`: the solver's final state.
    """

    value: Y
    result: RESULTS
    aux: Aux
    stats: dict[str, PyTree[Array]]
    state: Any


def throw_if_failed(sol: Solution, throw: bool) -> Solution:
    """The one place where a failed result becomes an exception (`throw=True`).

    Entry points call it after their `jit`, so that the compiled solve has no `eqx.error_if`
    (a host callback, which keeps a program out of JAX's persistent compilation cache). A
    concrete result is decided on the host: nothing is compiled when it succeeded, and a
    failure goes through the same `error_if` as a traced one (same exception and message;
    NaN under `EQX_ON_ERROR=nan`)."""
    if not throw:
        return sol
    failed = sol.result != RESULTS.successful
    if not isinstance(failed, jax.core.Tracer) and not np.any(np.asarray(failed)):
        return sol
    return sol.result.error_if(sol, failed)
