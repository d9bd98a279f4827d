"""``python -m pixcontrast.evaluate``: the evaluation CLI, kept at its documented path.

The code lives in :mod:`pixcontrast.train.evaluate` (``python -m pixcontrast.train.evaluate``
is the same command); this module only runs it.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("pixcontrast.train.evaluate", run_name="__main__", alter_sys=True)
