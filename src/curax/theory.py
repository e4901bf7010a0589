"""Numerical checks of the curation-dynamics theorems (`curax.theory`).

Each `check_*` function computes a theorem's hypotheses from a problem's rewards, runs the
dynamics and returns a [`curax.theory.TheoremReport`][]: hypothesis values, prediction,
measurement and verdict, taken at a certified point ([`curax.stable_point`][]); a limit
that cannot be certified gives the verdict `"inconclusive"`. See
[`curax.theory.basins`][] for the definitions of the basins `S_i`, gaps `Delta_i` and
leakage factors `kappa_i`.
"""

from ._theory import (
    atoms as atoms,
    Basins as Basins,
    basins as basins,
    check_collapse as check_collapse,
    check_monotonicity as check_monotonicity,
    check_nash_bargaining as check_nash_bargaining,
    check_non_collapse as check_non_collapse,
    check_outside_decay as check_outside_decay,
    check_real_data_stability as check_real_data_stability,
    check_variance as check_variance,
    classify_stable_point as classify_stable_point,
    contraction_bound as contraction_bound,
    finite_k_convergence as finite_k_convergence,
    FiniteKStudy as FiniteKStudy,
    INCONCLUSIVE as INCONCLUSIVE,
    Limit as Limit,
    nash_agreement as nash_agreement,
    outside_domination as outside_domination,
    phase_diagram as phase_diagram,
    PhaseDiagram as PhaseDiagram,
    PHASES as PHASES,
    TheoremReport as TheoremReport,
    two_well_problem as two_well_problem,
    VERDICTS as VERDICTS,
)
