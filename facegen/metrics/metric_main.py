"""The quality measures by name, timed, and logged as JSON lines.

Each measure is one `compute_*` function returning a float. `calc_metric`
runs one by name and returns a record; `append_jsonl` adds the record to a
log, one JSON object per line.
"""

import json
import time
from functools import partial
from pathlib import Path

from .nearest import compute_memorisation
from .swd import compute_swd

# The per-epoch check during training: 4x fewer directions and patches than
# the full score, about 8x faster and noisier. It has its own scale: compare it
# only with itself.
FAST_SWD = dict(n_projections=128, max_descriptors=2**15)

METRICS = {
    # Sliced Wasserstein distance x 1e3 on Laplacian-pyramid patches; lower is
    # better.
    'swd': compute_swd,
    'swd_fast': partial(compute_swd, **FAST_SWD),
    # Median nearest-training-image distance, generated vs held-out; well
    # below 1: copying.
    'memorisation': compute_memorisation,
}


def calc_metric(name, *image_sets, **settings):
    """Run the metric called name on image_sets; returns {'metric', 'value',
    'sizes', 'seconds'} where sizes are the image counts (scores depend on
    them)."""
    if name not in METRICS:
        raise ValueError(
            f'Unknown metric {name!r}; choose one of {sorted(METRICS)}.'
        )
    start = time.perf_counter()
    value = float(METRICS[name](*image_sets, **settings))
    return {
        'metric': name,
        'value': value,
        'sizes': [len(images) for images in image_sets],
        'seconds': round(time.perf_counter() - start, 2),
    }


def append_jsonl(record, path):
    """Append record (a dict of plain values) to the JSON-lines file at path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'a', encoding='utf-8') as log:
        log.write(json.dumps(record) + '\n')
