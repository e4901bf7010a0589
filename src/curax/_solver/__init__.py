from .active_set import ActiveSetNewton as ActiveSetNewton
from .anderson import Anderson as Anderson
from .iteration import (
    DampedIteration as DampedIteration,
    PlainIteration as PlainIteration,
)
from .newton_krylov import NewtonKrylov as NewtonKrylov
from .squarem import SQUAREM as SQUAREM
