"""Nearest-neighbour checks for memorisation: is a generated face closer to
its nearest training face than a real face the model never saw? Distances are
L2 on [0, 1] pixels."""

import torch

from .swd import to_unit_float

QUERY_CHUNK = 1024
REFERENCE_CHUNK = 4096


def _flat(images):
    """(N, C, H, W) uint8 or [0, 1] float -> (N, C*H*W) float32 in [0, 1]."""
    return to_unit_float(images).reshape(images.shape[0], -1)


def nearest_train(queries, train):
    """Distance to, and index of, the nearest training image for each query
    image.

    queries: (Q, C, H, W); train: (T, C, H, W). Returns ((Q,) distances, (Q,)
    indices). Works in chunks so only a QUERY_CHUNK x REFERENCE_CHUNK block of
    distances exists."""
    dists, indices = [], []
    for q_start in range(0, queries.shape[0], QUERY_CHUNK):
        q = _flat(queries[q_start : q_start + QUERY_CHUNK])  # (q, D)
        best = torch.full((q.shape[0],), float('inf'))
        best_index = torch.zeros(q.shape[0], dtype=torch.long)
        for t_start in range(0, train.shape[0], REFERENCE_CHUNK):
            t = _flat(train[t_start : t_start + REFERENCE_CHUNK])  # (t, D)
            # (q, t) distances
            d = torch.cdist(q, t, compute_mode='use_mm_for_euclid_dist')
            chunk_best, chunk_index = d.min(dim=1)
            better = chunk_best < best
            best = torch.where(better, chunk_best, best)
            best_index = torch.where(better, chunk_index + t_start, best_index)
        dists.append(best)
        indices.append(best_index)
    return torch.cat(dists), torch.cat(indices)


def _subset(images, n, generator):
    """At most n images drawn without replacement."""
    if n is None or images.shape[0] <= n:
        return images
    return images[torch.randperm(images.shape[0], generator=generator)[:n]]


def memorisation_distances(generated, train, held_out, n=1000, seed=0):
    """Median nearest-training-image distance of generated and of held-out
    real images.

    Uses at most n images of each query set (None: all). Returns
    {'gen_to_train', 'held_out_to_train', 'ratio'},
    ratio = gen_to_train / held_out_to_train."""
    generator = torch.Generator().manual_seed(seed)
    gen_dist, _ = nearest_train(_subset(generated, n, generator), train)
    held_dist, _ = nearest_train(_subset(held_out, n, generator), train)
    gen_median = gen_dist.median().item()
    held_median = held_dist.median().item()
    return {
        'gen_to_train': gen_median,
        'held_out_to_train': held_median,
        'ratio': gen_median / held_median,
    }


def compute_memorisation(generated, train, held_out, n=1000, seed=0):
    """The memorisation ratio, one float: near 1 means generated faces are as
    far from the training set as unseen real faces; well below 1 means the
    generator copies."""
    return memorisation_distances(generated, train, held_out, n, seed)['ratio']


def nearest_pairs(generated, train, k=8):
    """The k (generated, train) pairs closest to each other, closest first,
    for a picture.

    Returns {'generated': (k,) indices, 'train': (k,) indices,
    'distance': (k,)}."""
    dist, train_index = nearest_train(generated, train)
    order = torch.argsort(dist)[:k]
    return {
        'generated': order,
        'train': train_index[order],
        'distance': dist[order],
    }
