"""Hypothesis runs derandomized by default, so that a run of the suite (and CI) is
reproducible; ``HYPOTHESIS_PROFILE=explore`` draws new examples on every run."""

import os

from hypothesis import settings

settings.register_profile("reproducible", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reproducible"))
