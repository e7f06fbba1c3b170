"""Type aliases shared across the package (aiohttp's ``typedefs.py`` habit): one home each."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

#: any numpy array, as tensors travel and models take them.
Array = npt.NDArray[Any]
#: a model's inputs or outputs by tensor name.
Feeds = dict[str, Array]
#: float64 arrays of the pure numeric modules (novelty, drift, calibration).
Floats = npt.NDArray[np.float64]
#: floating arrays of any precision (confidence scores of float32 or float64 probabilities).
AnyFloats = npt.NDArray[np.floating[Any]]
