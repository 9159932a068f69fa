"""Progress bars: tqdm's ``auto`` bar (a widget in a notebook, text elsewhere).

In a kernel without ipywidgets (a site's headless runs), importing ``tqdm.auto`` warns on
stderr and then draws text bars; the warning is dropped here, once for every module that
shows progress, so that no run writes it to stderr.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
