"""Image analysis that the vetted notebooks run, importable so that it can be tested.

- :mod:`jipkit.analysis.lungs`: body and lung masks of a chest CT and the lung volumes,
  with torch (on the GPU when there is one); needs the ``torch`` extra.
- :mod:`jipkit.analysis.summary`: summaries of per-series values that may leave a site
  (mean, sd, quartiles, rounded as the site's checks round them) and histograms.

A notebook imports what it runs from here (``from jipkit.analysis.lungs import
measure_lungs``), so the tests check the very code that runs at the sites.
"""
