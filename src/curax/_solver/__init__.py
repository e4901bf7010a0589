from ._base import AbstractGeneralSolver as AbstractGeneralSolver
from ._constraint import (
    AbstractConstraint as AbstractConstraint,
    Simplex as Simplex,
    Unconstrained as Unconstrained,
)
from .active_set import ActiveSetNewton as ActiveSetNewton
from .anderson import Anderson as Anderson
from .iteration import (
    DampedIteration as DampedIteration,
    PlainIteration as PlainIteration,
)
from .newton_krylov import NewtonKrylov as NewtonKrylov
from .squarem import SQUAREM as SQUAREM
