"""Processing stages: pure functions plus thin stage objects that adapt Ray Data batches.

Importing the package gives the process a numba cache folder of its own (``numba_cache``), before anything
imports librosa: a process that shares one, inherited from the one that started it, could crash.
"""

from processors.numba_cache import isolate as _isolate_numba_cache

_isolate_numba_cache()
