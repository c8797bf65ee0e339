"""icp-influence: in-context probing vs gradient influence for data valuation.

The data flows in one shape (docs/design.md)::

    Example/Pool ─► valuator.score(candidates, probes) ─► ScoreMatrix ─► compare / select ─► finetune ─► Outcome
"""
__version__ = "0.1.0"

from .data import Example, Pool, add_label_noise, load_alpaca, load_paper_text  # noqa: E402
from .scores import ScoreMatrix  # noqa: E402
from .utils import seed_everything  # noqa: E402

__all__ = [
    "Example", "Pool", "ScoreMatrix", "add_label_noise", "load_alpaca", "load_paper_text",
    "seed_everything", "__version__",
]
