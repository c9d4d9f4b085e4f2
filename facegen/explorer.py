"""Walking through G's latent space from one seed's face to another's.

Smooth morphs mean G learnt a continuous space of faces rather than
memorising single pictures.
"""

import base64
import functools
import io

import numpy as np
import torch
from PIL import Image

from .plots import _grid_pixels, show_images
from .sampling import generate, latent_path, seeded_z

_FACE_PIXELS = 256  # the explorer's large face is about this wide
_TILE_PIXELS = 64  # ... and each face in its path strip about this wide
_MARK_COLOUR = (0.85, 0.1, 0.1)  # frame around the slider's face in the strip
_GAP_PIXELS = 6  # white space between the face and the strip in view_png

_EXPLORER_NOTE = (
    'The interactive explorer needs Jupyter with ipywidgets (pip install '
    'ipywidgets, then run this in a notebook); drawing a static grid instead.'
)


def _seed_pair_paths(z_size, seeds, steps):
    """The latent paths between consecutive seeds, stacked:
    (len(seeds) - 1) * steps rows."""
    if len(seeds) < 2:
        raise ValueError(
            f'seeds needs at least two seeds to walk between; got {seeds!r}.'
        )
    pairs = zip(seeds[:-1], seeds[1:])
    return torch.cat(
        [
            latent_path(seeded_z(a, z_size), seeded_z(b, z_size), steps)
            for a, b in pairs
        ]
    )


def interpolation_grid(G, z_size, seeds, steps=8, path=None, title=None):
    """Faces along the latent path between each pair of consecutive seeds,
    one row per pair (seeds[0] to seeds[1], seeds[1] to seeds[2], ...), steps
    faces per row. Returns the Figure and writes it as a PNG when path is
    given."""
    images = generate(G, _seed_pair_paths(z_size, seeds, steps))
    return show_images(
        images, nrow=steps, value_range=(-1, 1), title=title, path=path
    )


def _in_kernel():
    """True when running in a Jupyter kernel, where widgets can be shown."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    # Terminal IPython has no kernel.
    return shell is not None and hasattr(shell, 'kernel')


def _widgets_or_none():
    """The ipywidgets module when widgets can be shown here, else None."""
    if not _in_kernel():
        return None
    try:
        import ipywidgets
    except ImportError:
        return None
    return ipywidgets


def _png(pixels, scale):
    """PNG bytes of an (H, W, 3) array in [0, 1], each pixel enlarged to
    scale x scale."""
    image = Image.fromarray((pixels * 255).round().astype(np.uint8))
    image = image.resize(
        (image.width * scale, image.height * scale), Image.NEAREST
    )
    buffer = io.BytesIO()
    image.save(buffer, format='PNG')
    return buffer.getvalue()


def _mark_tile(pixels, index, size):
    """Colour the padding around face index of a one-row grid (padding 2) in
    place."""
    left, right = index * (size + 2), (index + 1) * (size + 2) + 2
    pixels[:2, left:right] = pixels[-2:, left:right] = _MARK_COLOUR
    pixels[:, left : left + 2] = pixels[:, right - 2 : right] = _MARK_COLOUR
    return pixels


def _stack_pngs(pngs):
    """PNG bytes of the given PNG pictures one above the other, left-aligned
    on white, _GAP_PIXELS apart."""
    images = [Image.open(io.BytesIO(png)).convert('RGB') for png in pngs]
    width = max(image.width for image in images)
    height = sum(image.height for image in images)
    canvas = Image.new(
        'RGB', (width, height + _GAP_PIXELS * (len(images) - 1)), 'white'
    )
    top = 0
    for image in images:
        canvas.paste(image, (0, top))
        top += image.height + _GAP_PIXELS
    buffer = io.BytesIO()
    canvas.save(buffer, format='PNG')
    return buffer.getvalue()


@functools.cache
def _explorer_class(widgets):
    """The explorer's box type: an ipywidgets VBox whose display also carries
    a still picture of its view. Made on first use, as ipywidgets is
    imported only when explore runs in a kernel."""

    class Explorer(widgets.VBox):
        """The explorer: children are (controls, face, strip). Jupyter shows
        the widget; the saved notebook also keeps a PNG of the view, which
        the HTML export (facegen.html) shows in its place."""

        def view_png(self):
            """PNG bytes of what the explorer shows now: the large face and,
            when shown, the strip below it."""
            _, face, strip = self.children
            shown = [face] if strip.layout.display == 'none' else [face, strip]
            return _stack_pngs([bytes(image.value) for image in shown])

        def _repr_mimebundle_(self, **kwargs):
            """The widget's own bundle (widget view, text/plain) plus the
            view as image/png, base64 as IPython's Image gives it."""
            bundle = dict(super()._repr_mimebundle_(**kwargs))
            bundle['image/png'] = base64.b64encode(self.view_png()).decode()
            return bundle

    return Explorer


def _explorer_box(widgets, G, z_size, seeds, steps):
    """The explorer's widgets, already showing seeds[0]'s face; see explore."""
    start = widgets.IntText(value=seeds[0], description='start seed')
    end = widgets.IntText(value=seeds[1], description='end seed')
    position = widgets.IntSlider(
        value=0, min=0, max=steps - 1, description='position'
    )
    whole = widgets.Checkbox(value=True, description='show the whole path')
    face, strip = widgets.Image(format='png'), widgets.Image(format='png')

    def update(_change=None):
        """Draw the face at the slider's position and, if asked for, the
        whole path."""
        z_path = latent_path(
            seeded_z(start.value, z_size), seeded_z(end.value, z_size), steps
        )
        images = generate(G, z_path)
        size = images.shape[-1]
        face.value = _png(
            _grid_pixels(
                images[position.value : position.value + 1], 1, (-1, 1)
            ),
            max(1, _FACE_PIXELS // size),
        )
        strip_pixels = _mark_tile(
            _grid_pixels(images, steps, (-1, 1)), position.value, size
        )
        strip.value = _png(strip_pixels, max(1, _TILE_PIXELS // size))
        strip.layout.display = None if whole.value else 'none'

    for control in (start, end, position, whole):
        control.observe(update, names='value')
    update()
    controls = widgets.VBox(
        [widgets.HBox([start, end]), widgets.HBox([position, whole])]
    )
    return _explorer_class(widgets)([controls, face, strip])


def explore(G, z_size, seeds=(0, 1), steps=8):
    """Walk through G's latent space in a notebook: two seeds pick the end
    faces and a slider moves from one to the other along latent_path; the face
    at the slider is shown large, the whole path in a strip below it. Returns
    the widget box (end the cell with it to show it); its display also
    carries a PNG of the view (view_png), which a saved notebook keeps for
    readers without widgets, such as the HTML export. Without a Jupyter kernel
    or ipywidgets it prints a note, draws
    interpolation_grid(G, z_size, seeds, steps) instead and returns that
    Figure."""
    if len(seeds) != 2:
        raise ValueError(
            f'explore walks between two seeds (start, end); got {seeds!r}. '
            f'For a longer chain use interpolation_grid.'
        )
    widgets = _widgets_or_none()
    if widgets is None:
        print(_EXPLORER_NOTE)
        return interpolation_grid(G, z_size, seeds, steps)
    return _explorer_box(widgets, G, z_size, seeds, steps)
