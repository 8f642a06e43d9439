"""Model search: how wide and how deep an MLP should be, and with which training settings.

``fm.search.run(space, X, y, strategy=...)`` trains one trial per parameter set
of a :class:`Space` (grid, random, successive halving, aging evolution), in this
process, in loky worker processes or on a Dask cluster, and returns a
:class:`SearchResult`. The core of fastmlp does not import this package: it
needs pandas for the table of trials, joblib for "processes", dask.distributed
for a Client, matplotlib for ``plot`` (the ``search`` extra).
"""
from ._result import SearchResult
from ._run import run
from ._space import Space
from ._trial import build_model

__all__ = ["Space", "SearchResult", "build_model", "run"]
