from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar


Y = TypeVar("Y")
Aux = TypeVar("Aux")
Args: TypeAlias = Any
Fn: TypeAlias = Callable[[Y, Args], Y]
