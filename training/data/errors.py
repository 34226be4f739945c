"""The one error type of the data pipeline, defined in `training.data_error` (free of numpy, for the desktop
app) and named here too, where the pipeline's modules import it from."""

from __future__ import annotations

from training.data_error import DataError

__all__ = ["DataError"]
