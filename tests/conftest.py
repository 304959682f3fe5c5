"""Suite-wide test settings.

Under CI (``CI=true``) Hypothesis runs derandomized: the same examples on every run, so a CI
verdict never depends on which random inputs were drawn. Developers' runs keep exploring new
inputs (and Hypothesis' local example database replays any failure found).
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")
