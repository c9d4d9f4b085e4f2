"""Weight-free quality measures for generated faces; see metric_main for the
registry."""

from .metric_main import FAST_SWD, METRICS, append_jsonl, calc_metric
from .metric_utils import cached_metric, fingerprint
from .nearest import compute_memorisation, memorisation_distances, nearest_pairs
from .swd import compute_swd, swd_levels

__all__ = [
    'FAST_SWD',
    'METRICS',
    'append_jsonl',
    'cached_metric',
    'calc_metric',
    'compute_memorisation',
    'compute_swd',
    'fingerprint',
    'memorisation_distances',
    'nearest_pairs',
    'swd_levels',
]
