"""The adversarial notebook corpus: hostile notebooks run end to end through the site's runner.

``notebooks/`` holds the corpus (one attempt per code cell, tagged ``attempt:<name>`` and
``expect:<...>``); ``conftest.py`` builds a realistic site and runs each notebook as a
signed job through :class:`jipkit.site.runner.Runner`; ``test_corpus.py`` asserts what
became of every attempt in the result that left the site.
"""
