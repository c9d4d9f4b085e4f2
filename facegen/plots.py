"""Pictures: image grids, loss and score curves, samples over epochs, GIF.

Figures come from pyplot so they show in the notebook; end the calling
line with ';' there, or the returned Figure is drawn a second time.
"""

import base64
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torchvision.utils as vutils
from PIL import Image, ImageDraw, ImageFont


def _as_float_cpu(images):
    """A detached float32 CPU copy of a batch (N, 3, H, W), for drawing or
    saving."""
    if images.dim() != 4:
        raise ValueError(
            f'Expected a batch of images (N, C, H, W); got shape '
            f'{tuple(images.shape)}. Add a batch dimension with unsqueeze(0).'
        )
    return images.detach().to('cpu', torch.float32)


def _grid_pixels(images, nrow, value_range):
    """An (H, W, 3) array in [0, 1]: the batch laid out as a padded grid."""
    grid = vutils.make_grid(
        _as_float_cpu(images),
        nrow=nrow,
        padding=2,
        pad_value=1.0,
        normalize=True,
        value_range=value_range,
    )
    return grid.permute(1, 2, 0).numpy()


def _save_figure(fig, path):
    """Write fig as a PNG when a path is given, creating its folder."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches='tight')


def show_images(images, nrow=8, value_range=(0, 1), title=None, path=None):
    """Draw a batch (N, 3, H, W) as a grid, nrow images per row; value_range
    is the range of the pixel values ((0, 1) for data, (-1, 1) for generator
    output)."""
    pixels = _grid_pixels(images, nrow, value_range)
    height, width = pixels.shape[:2]
    fig, ax = plt.subplots(
        figsize=(min(12, width / 40 + 1), min(12, height / 40 + 1))
    )
    ax.imshow(pixels)
    ax.axis('off')
    if title:
        ax.set_title(title)
    _save_figure(fig, path)
    return fig


def _moving_average(values, window):
    """Mean of each run of `window` consecutive values (len(values) - window
    + 1 of them)."""
    return np.convolve(values, np.ones(window) / window, mode='valid')


def plot_losses(losses, path=None):
    """Plot per-batch losses {'D': [...], 'G': [...]}: raw values faint,
    moving average bold."""
    missing = {'D', 'G'} - set(losses)
    if missing:
        raise KeyError(
            f'losses needs the keys D and G (lists of per-batch losses); '
            f'missing {sorted(missing)}.'
        )
    fig, ax = plt.subplots(figsize=(8, 4))
    for key, label, colour in (
        ('D', 'discriminator', 'tab:blue'),
        ('G', 'generator', 'tab:orange'),
    ):
        values = np.asarray(losses[key], dtype=float)
        if len(values) == 0:
            continue
        # About 50 windows over the run: smooth enough to see the trend, not
        # the noise.
        window = max(1, len(values) // 50)
        ax.plot(values, color=colour, linewidth=0.5, alpha=0.3)
        steps = np.arange(window - 1, len(values))
        ax.plot(
            steps, _moving_average(values, window), color=colour, label=label
        )
    ax.set_xlabel('batch')
    ax.set_ylabel('loss')
    ax.legend()
    _save_figure(fig, path)
    return fig


def save_image_grid(images, path, nrow=8, value_range=(-1, 1)):
    """Write a batch (N, 3, H, W) as one PNG grid (e.g. the fixed-z samples
    of an epoch)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vutils.save_image(
        _as_float_cpu(images),
        path,
        nrow=nrow,
        padding=2,
        pad_value=1.0,
        normalize=True,
        value_range=value_range,
    )
    return path


def evenly_spaced(n, most):
    """Indices of at most `most` of n items, evenly spaced, the first and the
    last always among them: all n when n <= most."""
    return np.unique(np.linspace(0, n - 1, min(most, n)).round().astype(int))


def samples_over_epochs(samples, path=None, max_rows=8, first_epoch=1):
    """One row of generated images per epoch; samples[i] (N, 3, H, W) in
    [-1, 1] is from epoch first_epoch + i. With more epochs than max_rows,
    evenly spaced ones are shown."""
    if len(samples) == 0:
        raise ValueError(
            'samples is empty: pass one batch of generated images per epoch.'
        )
    rows = evenly_spaced(len(samples), max_rows)
    fig, axes = plt.subplots(
        len(rows), 1, figsize=(8, 1.1 * len(rows)), squeeze=False
    )
    for ax, index in zip(axes[:, 0], rows):
        ax.imshow(_grid_pixels(samples[index][:8], nrow=8, value_range=(-1, 1)))
        ax.set_ylabel(
            f'epoch {first_epoch + index}', rotation=0, ha='right', va='center'
        )
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    _save_figure(fig, path)
    return fig


_GIF_SCALE = 3  # each 32x32 face is drawn 96 pixels wide
_GIF_FRAME_MS = 400  # time per epoch in the animation ...
_GIF_LAST_FRAME_MS = 2000  # ... and on the final faces before it starts again
# Frames of the animation at most: 36 epochs would make a 2.7 MB GIF, and the
# notebook and its HTML embed it.
_GIF_MAX_FRAMES = 12
_GIF_LABEL_PIXELS = 20  # height of the epoch label above each frame


def _labelled(frame, label):
    """frame with a white strip above it holding label in black."""
    font = ImageFont.load_default(size=_GIF_LABEL_PIXELS)
    out = Image.new('RGB', (frame.width, frame.height + _GIF_LABEL_PIXELS
                            + 8), 'white')
    out.paste(frame, (0, _GIF_LABEL_PIXELS + 8))
    ImageDraw.Draw(out).text((4, 2), label, fill='black', font=font)
    return out


def save_samples_gif(samples, path, nrow=8, max_frames=_GIF_MAX_FRAMES):
    """An animated GIF of the fixed-z samples, one frame per epoch (with
    more epochs than max_frames, evenly spaced ones, the first and last
    among them), each labelled with its epoch: samples[i] is the
    (N, 3, H, W) batch in [-1, 1] of epoch i + 1. The last frame is held
    longer."""
    if len(samples) == 0:
        raise ValueError(
            'samples is empty: pass one batch of generated images per epoch.'
        )
    frames = []
    for index in evenly_spaced(len(samples), max_frames):
        epoch, batch = index + 1, samples[index]
        pixels = _grid_pixels(batch, nrow, (-1, 1))  # (H, W, 3) in [0, 1]
        frame = Image.fromarray((pixels * 255).round().astype(np.uint8))
        frame = frame.resize(
            (frame.width * _GIF_SCALE, frame.height * _GIF_SCALE),
            Image.NEAREST)
        frames.append(_labelled(frame, f'epoch {epoch} of {len(samples)}'))
    durations = [_GIF_FRAME_MS] * (len(frames) - 1) + [_GIF_LAST_FRAME_MS]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:],
                   duration=durations, loop=0)
    return path


def show_gif(path):
    """An animated GIF for the notebook, embedded in the page (base64), so
    that it also plays in the exported HTML, which drops plain image/gif
    outputs."""
    # Only needed, and only present, in notebooks.
    from IPython.display import HTML

    data = base64.b64encode(Path(path).read_bytes()).decode('ascii')
    return HTML(
        f'<img src="data:image/gif;base64,{data}" alt="{Path(path).name}">'
    )


def plot_scores(scores, floor=None, path=None, label='SWD'):
    """The quality score after each epoch (lower is better), with the
    real-vs-real floor as a dashed line when given: how close the faces came to
    real ones, epoch by epoch."""
    if len(scores) == 0:
        raise ValueError('scores is empty: pass one score per epoch.')
    fig, ax = plt.subplots(figsize=(8, 3.5))
    epochs = np.arange(1, len(scores) + 1)
    ax.plot(epochs, scores, marker='o', label='generated vs held-out faces')
    if floor is not None:
        ax.axhline(
            floor, color='grey', linestyle='--', label='real vs real (floor)'
        )
    ax.set_xlabel('epoch')
    ax.set_ylabel(f'{label} (lower is better)')
    ax.set_ylim(bottom=0)
    ax.legend()
    _save_figure(fig, path)
    return fig


def show_nearest_pairs(generated, train, pairs, path=None):
    """Generated faces (top row) above their nearest training faces (bottom
    row), with the pixel distance between them; pairs comes from
    metrics.nearest_pairs. Both image sets are uint8 (N, 3, H, W)."""
    top = generated[pairs['generated']].float() / 255  # (k, 3, H, W)
    bottom = train[pairs['train']].float() / 255  # (k, 3, H, W)
    k = len(top)
    fig, axes = plt.subplots(2, k, figsize=(1.2 * k, 2.8), squeeze=False)
    for i in range(k):
        for row, image in enumerate((top[i], bottom[i])):
            ax = axes[row, i]
            ax.imshow(image.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1, i].set_xlabel(f'{pairs["distance"][i]:.1f}')
    axes[0, 0].set_ylabel('generated')
    axes[1, 0].set_ylabel('nearest\ntraining')
    fig.suptitle(
        'The generated faces closest to a training face (L2 distance below)'
    )
    _save_figure(fig, path)
    return fig
