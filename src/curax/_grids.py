from collections.abc import Callable, Sequence

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._problem import CurationProblem, is_concrete


def grid_1d(lo: float | Array, hi: float | Array, n: int) -> Float[Array, " n"]:
    """`n` equally spaced points on `[lo, hi]`.

    !!! Example

        ```python
        x = curax.grid_1d(-3.0, 3.0, 601)
        ```
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}.")
    # Traced ends (e.g. a sweep over the separation) are allowed; concrete ones are checked.
    if is_concrete(lo, hi) and not hi >= lo:
        raise ValueError(f"`hi` must be >= `lo`, got lo={lo}, hi={hi}.")
    return jnp.linspace(lo, hi, n)


def grid_2d(
    lo: float | tuple[float, float], hi: float | tuple[float, float], shape: tuple[int, int]
) -> Float[Array, "n 2"]:
    """Points of a `shape[0] x shape[1]` grid on the box `[lo, hi]^2`, flattened row-major to
    `(shape[0] * shape[1], 2)` (first coordinate varies slowest).

    !!! Example

        ```python
        pts = curax.grid_2d(-2.0, 2.0, (64, 64))  # (4096, 2)
        ```
    """
    if len(shape) != 2 or any(not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"`shape` must be two positive ints, got {shape!r}.")
    lo0, lo1 = (lo, lo) if isinstance(lo, (int, float)) else lo
    hi0, hi1 = (hi, hi) if isinstance(hi, (int, float)) else hi
    a, b = jnp.meshgrid(
        jnp.linspace(lo0, hi0, shape[0]), jnp.linspace(lo1, hi1, shape[1]), indexing="ij"
    )
    return jnp.stack([a.ravel(), b.ravel()], axis=-1)


def label_set(n: int) -> Float[Array, " n"]:
    """A finite label set `0, 1, ..., n - 1` as support points (classes, text lengths, ...)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}.")
    return jnp.arange(n, dtype=jnp.result_type(float))


def _sq_dist(points: Array, center: ArrayLike) -> Array:
    center = jnp.asarray(center, points.dtype)
    if points.ndim == 1:
        return (points - center) ** 2
    return jnp.sum((points - center[None, :]) ** 2, axis=-1)


def quadratic_reward(
    points: Float[Array, " n"] | Float[Array, "n d"],
    center: ArrayLike,
    curvature: ArrayLike = 1.0,
    height: ArrayLike = 0.0,
) -> Float[Array, " n"]:
    """`height - curvature * |x - center|^2`: a quadratic well, the reward family of the papers'
    synthetic experiments (Falahati et al.; Ferbach et al.).

    !!! Example

        ```python
        r = curax.quadratic_reward(curax.grid_1d(-3.0, 3.0, 101), center=1.0, curvature=2.0)
        ```
    """
    return height - curvature * _sq_dist(points, center)


def gaussian_bump_reward(
    points: Float[Array, " n"] | Float[Array, "n d"],
    center: ArrayLike,
    width: ArrayLike = 1.0,
    height: ArrayLike = 1.0,
) -> Float[Array, " n"]:
    """`height * exp(-|x - center|^2 / (2 width^2))`: a bounded bump reward."""
    return height * jnp.exp(-_sq_dist(points, center) / (2 * jnp.asarray(width) ** 2))


def rewards_from_functions(
    points: Float[Array, " n"] | Float[Array, "n d"],
    functions: Sequence[Callable[[Array], Array]],
) -> Float[Array, "m n"]:
    """Stack reward functions evaluated on the support: row `i` is `functions[i](points)`.

    !!! Example

        ```python
        x = curax.grid_1d(-3.0, 3.0, 101)
        E = curax.rewards_from_functions(x, [lambda x: -x**2, lambda x: x])
        ```
    """
    if len(functions) == 0:
        raise ValueError("`functions` must contain at least one reward function.")
    rows = [jnp.asarray(f(points)) for f in functions]
    n = points.shape[0]
    for i, r in enumerate(rows):
        if r.shape != (n,):
            raise ValueError(
                f"`functions[{i}]` must return one reward per support point, shape ({n},); got "
                f"{r.shape}."
            )
    return jnp.stack(rows)


def two_basin_problem(
    n: int = 401,
    separation: float | Array = 3.0,
    q: float | Array = 0.5,
    k: int | None = None,
    curvature: float | Array = 4.0,
    width: float | Array | None = None,
    temperature: float | Array = 1.0,
    reference_weight: float | Array = 0.0,
) -> tuple[Float[Array, " n"], CurationProblem]:
    """The two-reward setting of Falahati et al.: on a 1-D grid, reward 1 is a quadratic well
    centred at `-separation / 2`, reward 2 at `+separation / 2`, weights `(q, 1 - q)`.

    Returns `(points, problem)`; the grid spans `[-w, w]` with `w = width` or, by default,
    `separation` (both wells and their neighbourhoods). With `reference_weight > 0` the
    reference is the uniform distribution.

    !!! Example

        ```python
        x, problem = curax.two_basin_problem(n=401, separation=3.0, q=0.3)
        ```
    """
    half = separation if width is None else width
    x = grid_1d(-half, half, n)
    rewards = jnp.stack(
        [
            quadratic_reward(x, -separation / 2, curvature),
            quadratic_reward(x, separation / 2, curvature),
        ]
    )
    use_reference = not is_concrete(reference_weight) or reference_weight > 0
    reference = jnp.full((n,), 1.0 / n, x.dtype) if use_reference else None
    problem = CurationProblem(
        rewards,
        jnp.array([q, 1 - q], x.dtype),
        k,
        temperature,
        reference,
        reference_weight,
    )
    return x, problem
