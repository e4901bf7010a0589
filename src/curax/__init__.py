"""curax: curation dynamics of generative models retrained on their own curated output."""

import importlib.metadata

import jax


# Certified solves need float64; curax enables it at import. Arrays you create in float32
# stay float32 (state what float32 can reach: see the README).
jax.config.update("jax_enable_x64", True)

from . import theory as theory
from ._fixed_point import fixed_point as fixed_point
from ._grids import (
    gaussian_bump_reward as gaussian_bump_reward,
    grid_1d as grid_1d,
    grid_2d as grid_2d,
    label_set as label_set,
    quadratic_reward as quadratic_reward,
    rewards_from_functions as rewards_from_functions,
    two_basin_problem as two_basin_problem,
)
from ._maps import (
    AbstractReplicatorMap as AbstractReplicatorMap,
    curate as curate,
    CurationMap as CurationMap,
    expected_exp_rewards as expected_exp_rewards,
    fw_gap as fw_gap,
    growth as growth,
    potential as potential,
    ReplicatorMap as ReplicatorMap,
    trajectory as trajectory,
)
from ._nash import (
    BargainingProblem as BargainingProblem,
    compare as compare,
    mixing_fixed_point as mixing_fixed_point,
    nash_optimize as nash_optimize,
    nash_solution as nash_solution,
    NashComparison as NashComparison,
)
from ._problem import (
    CurationProblem as CurationProblem,
    nodes_for_spread as nodes_for_spread,
    reference_weight_from_ratio as reference_weight_from_ratio,
    spread_for_nodes as spread_for_nodes,
    support_size as support_size,
)
from ._sampling import (
    fit_mixture as fit_mixture,
    GaussianMixture as GaussianMixture,
    sample_round as sample_round,
    sample_size_study as sample_size_study,
    SampleSizeStudy as SampleSizeStudy,
    simulate_histogram as simulate_histogram,
    simulate_mixture as simulate_mixture,
)
from ._sharding import device_mesh as device_mesh, shard_support as shard_support
from ._solution import RESULTS as RESULTS, Solution as Solution
from ._solver import (
    AbstractConstraint as AbstractConstraint,
    AbstractGeneralSolver as AbstractGeneralSolver,
    ActiveSetNewton as ActiveSetNewton,
    Anderson as Anderson,
    DampedIteration as DampedIteration,
    NewtonKrylov as NewtonKrylov,
    PlainIteration as PlainIteration,
    Simplex as Simplex,
    SQUAREM as SQUAREM,
    Unconstrained as Unconstrained,
)
from ._stability import (
    stability as stability,
    StabilityReport as StabilityReport,
)
from ._stable_point import (
    stable_point as stable_point,
    stable_point_method as stable_point_method,
)
from ._sweep import (
    load_sweep as load_sweep,
    plot_sweep as plot_sweep,
    sweep as sweep,
    SweepResult as SweepResult,
)


try:
    __version__ = importlib.metadata.version("curax")
except importlib.metadata.PackageNotFoundError:  # run from a source tree (PYTHONPATH=src)
    __version__ = "0+unknown"
