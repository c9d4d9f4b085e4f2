"""Weight-free quality measures for generated faces, by name."""
from .nearest import compute_memorisation, nearest_pairs
from .swd import compute_swd

METRICS = {
    # Sliced Wasserstein distance x 1e3 on Laplacian-pyramid patches; lower is better.
    'swd': compute_swd,
    # Median nearest-training-image distance, generated vs held-out; ratio << 1 means copying.
    'memorisation': compute_memorisation,
}

__all__ = ['METRICS', 'compute_swd', 'compute_memorisation', 'nearest_pairs']
