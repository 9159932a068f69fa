"""Data-layer benchmarks of jipkit against the tools a site would otherwise use.

Run them all with ``python -m tests.benchmarks`` (``--help`` for the options).  Every
figure is compared with baselines measured in the same run, interleaved round by
round, and reported as a median: the machines are noisy, absolute numbers are not.
Timings are never test assertions; ``test_smoke.py`` only checks that the benchmarks
still run.
"""
