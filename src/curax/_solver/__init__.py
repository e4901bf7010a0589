from .iteration import DampedIteration as DampedIteration, PlainIteration as PlainIteration
from .squarem import SQUAREM as SQUAREM
