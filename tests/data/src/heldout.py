"""The held-out attribution set: written after moa.semantic's weights were frozen (commit a48a8d4).

Never tune on it (see bench/RESULTS.md); a changed matcher needs a new held-out set.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from heldout_a import CASES as A  # noqa: E402
from heldout_b import CASES as B  # noqa: E402
from heldout_c import CASES as C  # noqa: E402
from heldout_d import CASES as D  # noqa: E402

DESCRIPTION = (
    "Held-out attribution cases, written after the semantic matcher's weights and thresholds "
    "were frozen (commit a48a8d4): realistic aggregator styles (heading + bullets, reordered "
    "prose, list <-> prose, a 'Here's a combined answer:' opener, two candidates saying the "
    "same thing, a wrong candidate the final corrects, code and tables). Never tune on it."
)
SPLIT = "holdout"
CASES = A + B + C + D
