"""Disclosure control: what may leave a site after a run, checked automatically.

The federation returns only output cells and typed records; this package decides, at the
site and after execution, which of them leave and in what form:

- :class:`OutputPolicy` (``policy.py``): the site's rules, with safe defaults;
- :class:`IdentifierMatcher` (``identifiers.py``, with ``forms.py``, ``normalize.py`` and
  ``encodings.py``): every identifying value of the site's index, found in text however
  it is written or encoded; :func:`cached_matcher` keeps one per index state;
- ``blobs.py``: raw data (base64, hex, compressed, escaped bytes, long runs of numbers);
- ``counts.py``: k-suppression, secondary suppression, rounding;
- ``source.py``: record names must come from the reviewed notebook;
- ``images.py``: text and hidden data in PNG images;
- :func:`check_result` (``apply.py``): all of it applied to one result, giving a
  :class:`CheckedResult` with the redaction report (``report.py``) and release flags.

Threat model: the notebook's author may be careless or hostile, its reviewers may miss
things, and the coordinator may be compromised; the site decides what leaves.  Text is
checked; pixels are not (images wait for a person's release); numbers hiding data cannot
be detected in general, so they are bounded (a budget of records and numeric values per
result, floats rounded, record names only from the reviewed code).

Example
-------
>>> from jipkit.site.disclosure import OutputPolicy, cached_matcher, check_result
>>> checked = check_result(outcome.outputs, outcome.records, policy=OutputPolicy(),
...                        matcher=cached_matcher(config.index_path),
...                        notebook_source=source)  # doctest: +SKIP
"""

from __future__ import annotations

from jipkit.site.disclosure.apply import CheckedResult, check_result, record_text
from jipkit.site.disclosure.identifiers import Hit, IdentifierMatcher, cached_matcher, index_values
from jipkit.site.disclosure.policy import OutputPolicy
from jipkit.site.disclosure.report import RELEASE_REASONS, RULES, Redaction, ReleaseReason, marker

__all__ = [
    "RELEASE_REASONS",
    "RULES",
    "CheckedResult",
    "Hit",
    "IdentifierMatcher",
    "OutputPolicy",
    "Redaction",
    "ReleaseReason",
    "cached_matcher",
    "check_result",
    "index_values",
    "marker",
    "record_text",
]
