from collections.abc import Callable

import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Bool, Int, PyTree, Scalar

from .._custom_types import Aux, Y
from ._base import AbstractGeneralSolver, AbstractGeneralState
from ._constraint import AbstractConstraint, Simplex, Unconstrained
from ._misc import (
    DEFAULT_PATIENCE,
    Monitor,
    real_dtype,
    tree_allfinite,
    tree_sub,
    tree_where,
)


# Unconstrained Anderson accepts a candidate whose residual is up to this many times the best
# so far: its residuals are not monotone on contractions, and rejecting (which clears the
# history) throws good steps away.
_DEFAULT_SAFEGUARD = 10.0


class _AndersonState(AbstractGeneralState):
    fy: PyTree[Array]
    monitor: Monitor
    num_map_evals: Int[Array, ""]
    prev_y: PyTree[Array]
    prev_q: PyTree[Array]
    dx: PyTree[Array]  # leaves of shape (memory, *leaf.shape), written cyclically
    dq: PyTree[Array]
    filled: Bool[Array, " memory"]
    head: Int[Array, ""]
    have_prev: Bool[Array, ""]
    num_rejected: Int[Array, ""]


def _gram(a: PyTree[Array], b: PyTree[Array], memory: int) -> Array:
    """`sum_leaves conj(a_i) . b_j` for histories with a leading memory axis (Hermitian
    inner products for complex leaves)."""
    with jax.numpy_dtype_promotion("standard"):
        terms = [
            jnp.conj(x.reshape(memory, -1)) @ y.reshape(memory, -1).T
            for x, y in zip(jtu.tree_leaves(a), jtu.tree_leaves(b))
        ]
        return sum(terms[1:], terms[0])


def _inner(a: PyTree[Array], v: PyTree[Array], memory: int) -> Array:
    """`sum_leaves conj(a_i) . v` for a history `a` and a single pytree `v`."""
    with jax.numpy_dtype_promotion("standard"):
        terms = [
            jnp.conj(x.reshape(memory, -1)) @ y.reshape(-1)
            for x, y in zip(jtu.tree_leaves(a), jtu.tree_leaves(v))
        ]
        return sum(terms[1:], terms[0])


def _combine(gamma: Array, hist: PyTree[Array]) -> PyTree[Array]:
    """`sum_i gamma_i hist_i`, cast back to each leaf's dtype (real part for real leaves)."""

    def comb(h):
        with jax.numpy_dtype_promotion("standard"):
            out = jnp.tensordot(gamma, h, axes=1)
        if not jnp.iscomplexobj(h):
            out = jnp.real(out)
        return out.astype(h.dtype)

    return jtu.tree_map(comb, hist)


class Anderson(AbstractGeneralSolver[Y, Aux, _AndersonState]):
    """Anderson acceleration (type II, "Anderson mixing") for fixed points of any map on
    pytrees of real or complex arrays.

    With mixing residuals `q_k = P(f(y_k)) - y_k` (`P` the constraint's projection, the
    identity by default) and the last `memory` differences `dX`, `dQ` of iterates and
    residuals (preallocated buffers, overwritten cyclically), the candidate is
    `y_k + q_k - (dX + dQ) gamma`, `gamma` minimising `|q_k - dQ gamma|^2 + reg |gamma|^2`
    (Hermitian inner products for complex leaves; columns scaled to unit norm, `reg`
    relative). The candidate is accepted if its scaled residual is finite and below
    `safeguard` times the best so far (by default 10; under [`curax.Simplex`][] by default
    below the current residual); otherwise the plain step `P(f(y_k))` is taken and the
    history is cleared. One map evaluation per accepted step, two per rejected one.

    **Termination.** Stops when the estimated distance to the fixed point,
    `norm((f(y) - y) / (atol + rtol |f(y)|)) / (1 - rho_hat)`, is below 1, with `1 - rho_hat`
    the smallest secant ratio `|dg| / |dy|` of the last 16 steps (see `docs/solvers.md`).

    **Constraint.** With [`curax.Simplex`][] the images are renormalised and the candidate
    is floored at `floor * P(f(p))` and renormalised (no point loses its mass at once: under a
    replicator map zero mass never regrows); [`curax.fixed_point`][] chooses it for
    replicator maps.

    ??? cite "References"

        ```bibtex
        @article{walker2011anderson,
            author = {Walker, Homer F. and Ni, Peng},
            title = {Anderson Acceleration for Fixed-Point Iterations},
            journal = {SIAM Journal on Numerical Analysis},
            volume = {49},
            number = {4},
            pages = {1715--1735},
            year = {2011},
        }
        ```

    !!! Example

        ```python
        sol = optx.fixed_point(lambda y, _: jnp.tanh(y + 1), curax.Anderson(1e-10, 1e-10),
                               jnp.zeros(3))
        ```
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    memory: int = 6
    regularisation: float = 1e-12
    safeguard: float | None = None
    constraint: AbstractConstraint = Unconstrained()
    patience: int | None = DEFAULT_PATIENCE

    def __check_init__(self):
        if self.memory < 1:
            raise ValueError(f"`memory` must be >= 1, got {self.memory}.")
        if self.safeguard is not None and not self.safeguard > 0:
            raise ValueError(f"`safeguard` must be > 0, got {self.safeguard}.")

    def init(self, fn, y, args, options, f_struct, aux_struct, tags) -> _AndersonState:
        del options, f_struct, aux_struct, tags
        fy, monitor = self._start(fn, y, args)
        hist = jtu.tree_map(lambda v: jnp.zeros((self.memory,) + v.shape, v.dtype), y)
        zeros = jtu.tree_map(jnp.zeros_like, y)
        return _AndersonState(
            fy,
            monitor,
            jnp.array(1),
            zeros,
            zeros,
            hist,
            hist,
            jnp.zeros((self.memory,), bool),
            jnp.array(0),
            jnp.array(False),
            jnp.array(0),
        )

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        con = self.constraint
        m = self.memory
        plain = con.project(state.fy)
        q = tree_sub(plain, y)

        # History update with the pair (previous iterate -> y).
        slot = state.head % m
        have = state.have_prev

        def put(hist, new, old):
            return hist.at[slot].set(jnp.where(have, new - old, jnp.zeros_like(new)))

        dx = jtu.tree_map(put, state.dx, y, state.prev_y)
        dq = jtu.tree_map(put, state.dq, q, state.prev_q)
        filled = state.filled.at[slot].set(have)

        gram = _gram(dq, dq, m)
        rdtype = real_dtype(y)
        mask = filled[:, None] & filled[None, :]
        gram = jnp.where(mask, gram, 0.0)
        diag = jnp.real(jnp.diagonal(gram))
        scale = jnp.where(filled & (diag > 0), jnp.sqrt(jnp.where(diag > 0, diag, 1.0)), 1.0)
        scale = scale.astype(rdtype)
        with jax.numpy_dtype_promotion("standard"):
            gram_s = gram / (scale[:, None] * scale[None, :])
            gram_s = gram_s + jnp.diag(jnp.where(filled, self.regularisation, 1.0))
            rhs = jnp.where(filled, _inner(dq, q, m), 0.0) / scale
            gamma = jnp.where(filled, jnp.linalg.solve(gram_s, rhs) / scale, 0.0)
        gamma = jnp.where(jnp.all(jnp.isfinite(gamma)), gamma, jnp.zeros_like(gamma))
        update = _combine(gamma, jtu.tree_map(lambda a, b: a + b, dx, dq))
        cand = con.safeguard(tree_sub(plain, update), plain)
        cand = tree_where(tree_allfinite(cand), cand, plain)
        fc, aux_c = fn(cand, args)
        err_c = self._error(cand, fc)
        if self.safeguard is None and isinstance(con, Simplex):
            # Mass lost on the simplex is slow to regain: the residual must decrease.
            bound = state.monitor.residual
        else:
            factor = _DEFAULT_SAFEGUARD if self.safeguard is None else self.safeguard
            bound = factor * state.monitor.best
        mixing = jnp.any(filled)
        # Without history the candidate is the plain step itself: nothing to reject.
        accept = ~mixing | (jnp.isfinite(err_c) & (err_c < bound))

        def take_plain():
            f2, aux2 = fn(plain, args)
            return plain, f2, aux2

        new_y, new_fy, aux = lax.cond(accept, lambda: (cand, fc, aux_c), take_plain)
        monitor = self._record(state.monitor, y, state.fy, new_y, new_fy, ~accept)
        new_state = _AndersonState(
            new_fy,
            monitor,
            state.num_map_evals + 1 + jnp.where(accept, 0, 1),
            y,
            q,
            jtu.tree_map(lambda h: jnp.where(accept, h, jnp.zeros_like(h)), dx),
            jtu.tree_map(lambda h: jnp.where(accept, h, jnp.zeros_like(h)), dq),
            filled & accept,
            jnp.where(accept, state.head + 1, 0),
            jnp.array(True),
            state.num_rejected + jnp.where(accept, 0, 1),
        )
        return new_y, new_state, aux

    def _stats(self, state):
        return {**super()._stats(state), "num_rejected": state.num_rejected}


Anderson.__init__.__doc__ = """**Arguments:**

- `rtol`: relative tolerance (see the termination rule above).
- `atol`: absolute tolerance.
- `norm`: the norm of the scaled residual, e.g. `optx.max_norm` (default).
- `memory`: number of past differences kept (static), default 6.
- `regularisation`: Tikhonov regularisation of the least-squares problem (its columns scaled
    to unit norm), default `1e-12`.
- `safeguard`: a candidate whose scaled residual exceeds `safeguard` times the best so far
    is rejected. Default `None`: 10, or under [`curax.Simplex`][] "must be below the
    current residual".
- `constraint`: [`curax.Unconstrained`][] (default) or [`curax.Simplex`][].
- `patience`: steps without a 1% improvement of the best residual (with most mixing steps
    rejected) after which the solve is declared stalled; `None` never.
"""
