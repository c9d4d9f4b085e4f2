"""Tests for the latent-space explorer in helpers.py: paths, seeded z, grid and
widgets.

A tiny generator defined here stands in for the DCGAN one, so these tests stay
fast and do not depend on dcgan.py. It has batch norm, so a forward pass in
training mode would change its running statistics: that is how the tests see
whether eval mode was used.
"""

import base64
import io
import sys
import types

import matplotlib

matplotlib.use('Agg')  # before pyplot is imported anywhere: no display in tests

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

import helpers  # noqa: E402
from facegen import explorer  # noqa: E402

Z_SIZE = 16
IMAGE_SIZE = 8
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


class TinyGenerator(nn.Module):
    """z (N, Z_SIZE) -> images (N, 3, 8, 8) in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(Z_SIZE, 3 * IMAGE_SIZE * IMAGE_SIZE),
            nn.BatchNorm1d(3 * IMAGE_SIZE * IMAGE_SIZE),
            nn.Tanh(),
        )

    def forward(self, z):
        return self.layers(z).view(-1, 3, IMAGE_SIZE, IMAGE_SIZE)


@pytest.fixture(autouse=True)
def close_figures():
    """Each test closes the figures it made."""
    yield
    matplotlib.pyplot.close('all')


@pytest.fixture
def G():
    """A freshly initialised tiny generator, in training mode."""
    torch.manual_seed(0)
    return TinyGenerator()


def state_copy(model):
    """A detached copy of model's parameters and buffers."""
    return {name: value.clone() for name, value in model.state_dict().items()}


def assert_same_state(model, before):
    """Fail, naming the entry, when model's parameters or buffers differ
    from before."""
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), (
            f'G.{name} changed; use eval mode, no_grad'
        )


def faked_kernel(monkeypatch):
    """Make the explorer believe it runs in a Jupyter kernel."""
    monkeypatch.setattr(explorer, '_in_kernel', lambda: True)


def explorer_parts(box):
    """(controls by description, [face image, strip image]) of an explorer
    box."""
    import ipywidgets as widgets

    controls, face, strip = box.children
    named = {
        w.description: w for row in controls.children for w in row.children
    }
    assert isinstance(face, widgets.Image) and isinstance(strip, widgets.Image)
    return named, face, strip


# --- latent_path --------------------------------------------------------------


def test_latent_path_shape_and_ends():
    start, end = helpers.seeded_z(1, Z_SIZE), helpers.seeded_z(2, Z_SIZE)
    path = helpers.latent_path(start, end, 7)
    assert path.shape == (7, Z_SIZE) and path.dtype == torch.float32
    assert torch.allclose(path[0], start[0], atol=1e-6), (
        'the path must start at z_start'
    )
    assert torch.allclose(path[-1], end[0], atol=1e-6), (
        'the path must end at z_end'
    )


def test_latent_path_accepts_one_dimensional_vectors():
    start, end = torch.randn(Z_SIZE), torch.randn(Z_SIZE)
    path = helpers.latent_path(start, end, 3)
    assert path.shape == (3, Z_SIZE)
    assert torch.allclose(path[0], start, atol=1e-6)


def test_latent_path_is_spherical_not_linear():
    torch.manual_seed(3)
    start, end = torch.randn(100), torch.randn(100) * 1.3
    path = helpers.latent_path(start, end, 9)
    norms = path.norm(dim=1)
    low, high = sorted((start.norm().item(), end.norm().item()))
    assert norms.min() >= low - 1e-4 and norms.max() <= high + 1e-4, (
        f'norms {norms.tolist()} leave [{low:.3f}, {high:.3f}]: '
        'the path dips inside the sphere'
    )
    # Slerp turns the direction at a constant rate: the middle point is
    # equally far (in angle) from both ends, and its norm is well above the
    # straight line's.
    middle = path[4]
    assert torch.isclose(
        torch.cosine_similarity(middle, start, dim=0),
        torch.cosine_similarity(middle, end, dim=0),
        atol=1e-5,
    )
    assert middle.norm() > ((start + end) / 2).norm() * 1.1


@pytest.mark.parametrize(
    'factor', [2.0, -1.0], ids=['parallel', 'antiparallel']
)
def test_latent_path_falls_back_to_a_line_for_parallel_ends(factor):
    start = torch.randn(Z_SIZE)
    end = start * factor
    path = helpers.latent_path(start, end, 5)
    line = torch.stack(
        [(1 - t) * start + t * end for t in torch.linspace(0, 1, 5)]
    )
    assert torch.isfinite(path).all(), (
        'parallel ends gave NaN or inf: fall back to a line'
    )
    assert torch.allclose(path, line, atol=1e-5)


def test_latent_path_rejects_bad_input():
    with pytest.raises(ValueError, match='steps'):
        helpers.latent_path(torch.randn(Z_SIZE), torch.randn(Z_SIZE), 1)
    with pytest.raises(ValueError, match='same size'):
        helpers.latent_path(torch.randn(Z_SIZE), torch.randn(Z_SIZE + 1), 4)
    with pytest.raises(ValueError, match='one latent vector'):
        helpers.latent_path(torch.randn(2, Z_SIZE), torch.randn(2, Z_SIZE), 4)


# --- seeded_z -----------------------------------------------------------------


def test_seeded_z_is_reproducible_and_seed_dependent():
    z = helpers.seeded_z(7, Z_SIZE)
    assert z.shape == (1, Z_SIZE) and z.device.type == 'cpu'
    assert torch.equal(z, helpers.seeded_z(7, Z_SIZE))
    assert not torch.equal(z, helpers.seeded_z(8, Z_SIZE))


def test_seeded_z_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    helpers.seeded_z(5, Z_SIZE)
    assert torch.equal(torch.rand(4), expected), (
        'seeded_z reseeded or drew from torch RNG'
    )


# --- interpolation_grid -------------------------------------------------------


def grid_rows(fig):
    """Rows of faces in a figure drawn by show_images (padding 2 around each
    face)."""
    height = fig.axes[0].images[0].get_array().shape[0]
    return (height - 2) // (IMAGE_SIZE + 2)


@pytest.mark.parametrize('seeds', [(0, 1), (4, 2, 9, 1)])
def test_interpolation_grid_draws_one_row_per_seed_pair(G, tmp_path, seeds):
    path = tmp_path / 'out' / 'walk.png'
    fig = helpers.interpolation_grid(
        G, Z_SIZE, seeds, steps=5, path=path, title='walk'
    )
    assert isinstance(fig, Figure)
    assert grid_rows(fig) == len(seeds) - 1
    assert (
        fig.axes[0].images[0].get_array().shape[1] == 5 * (IMAGE_SIZE + 2) + 2
    )
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_interpolation_grid_rows_start_and_end_at_the_seeds(G):
    outputs = []
    G.register_forward_hook(
        lambda module, inputs, output: outputs.append(output)
    )
    G.eval()
    helpers.interpolation_grid(G, Z_SIZE, (3, 5, 3), steps=4)
    # Rows 3 -> 5 and 5 -> 3 of 4 faces: faces 0, 3, 4, 7 are the seeds' own
    # faces.
    expected = G.layers(
        torch.cat([helpers.seeded_z(s, Z_SIZE) for s in (3, 5, 5, 3)])
    )
    assert torch.allclose(
        outputs[0][[0, 3, 4, 7]].flatten(1), expected, atol=1e-5
    )


@pytest.mark.parametrize('training', [True, False])
def test_interpolation_grid_leaves_G_as_it_was(G, training):
    G.train(training)
    before = state_copy(G)
    helpers.interpolation_grid(G, Z_SIZE, (0, 1, 2), steps=3)
    assert G.training is training, 'G training mode was not restored'
    assert_same_state(G, before)


def test_generate_returns_cpu_images_without_gradients(G):
    images = helpers.generate(
        G, helpers.latent_path(torch.randn(Z_SIZE), torch.randn(Z_SIZE), 3)
    )
    assert (
        images.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
        and images.device.type == 'cpu'
    )
    assert not images.requires_grad, 'G must run under torch.no_grad()'


def test_interpolation_grid_needs_two_seeds(G):
    with pytest.raises(ValueError, match='at least two seeds'):
        helpers.interpolation_grid(G, Z_SIZE, (0,))


# --- explore ------------------------------------------------------------------


def test_kernel_detection(monkeypatch):
    import IPython

    assert not explorer._in_kernel(), 'pytest is not a Jupyter kernel'
    monkeypatch.setattr(IPython, 'get_ipython', lambda: types.SimpleNamespace())
    assert not explorer._in_kernel(), (
        'terminal IPython (no kernel) cannot show widgets'
    )
    monkeypatch.setattr(
        IPython, 'get_ipython', lambda: types.SimpleNamespace(kernel=1)
    )
    assert explorer._in_kernel()


def test_explore_outside_a_kernel_draws_the_grid(G, capsys):
    fig = helpers.explore(G, Z_SIZE, seeds=(2, 3), steps=4)
    assert isinstance(fig, Figure)
    assert grid_rows(fig) == 1
    assert 'needs Jupyter with ipywidgets' in capsys.readouterr().out


def test_explore_without_ipywidgets_draws_the_grid(G, capsys, monkeypatch):
    faked_kernel(monkeypatch)
    # import raises ImportError
    monkeypatch.setitem(sys.modules, 'ipywidgets', None)
    assert isinstance(helpers.explore(G, Z_SIZE), Figure)
    assert 'needs Jupyter with ipywidgets' in capsys.readouterr().out


def test_explore_in_a_kernel_returns_widgets_that_update(
    G, monkeypatch, capsys
):
    import ipywidgets as widgets

    faked_kernel(monkeypatch)
    G.train()
    before = state_copy(G)
    box = helpers.explore(G, Z_SIZE, seeds=(0, 1), steps=6)
    assert isinstance(box, widgets.Box)
    assert capsys.readouterr().out == '', 'no fallback note inside a kernel'
    controls, face, strip = explorer_parts(box)
    slider = controls['position']
    assert (slider.min, slider.max, slider.value) == (0, 5, 0)
    # the widget stores a memoryview
    assert bytes(face.value).startswith(PNG_SIGNATURE)
    assert bytes(strip.value).startswith(PNG_SIGNATURE)

    first_face, first_strip = face.value, strip.value
    slider.value = 5
    assert face.value != first_face, (
        'moving the slider must change the face shown'
    )
    assert strip.value != first_strip, 'the strip must mark the slider position'

    end_face = face.value
    controls['end seed'].value = 9
    assert face.value != end_face, (
        'a new end seed must change the face at the end'
    )
    assert G.training
    assert_same_state(G, before)


def test_explore_whole_path_checkbox_hides_the_strip(G, monkeypatch):
    faked_kernel(monkeypatch)
    controls, _, strip = explorer_parts(helpers.explore(G, Z_SIZE))
    assert strip.layout.display != 'none'
    controls['show the whole path'].value = False
    assert strip.layout.display == 'none'
    controls['show the whole path'].value = True
    assert strip.layout.display != 'none'


def test_explore_needs_two_seeds(G):
    with pytest.raises(ValueError, match='two seeds'):
        helpers.explore(G, Z_SIZE, seeds=(0, 1, 2))


# --- the explorer's picture (for saved notebooks and the HTML export) ---------


def png_size(png):
    """(width, height) of PNG bytes."""
    from PIL import Image

    assert png.startswith(PNG_SIGNATURE)
    return Image.open(io.BytesIO(png)).size


def test_explore_display_carries_the_widget_and_a_png_of_its_view(
    G, monkeypatch
):
    from IPython.core.formatters import DisplayFormatter

    faked_kernel(monkeypatch)
    box = helpers.explore(G, Z_SIZE, seeds=(0, 1), steps=6)
    data, _ = DisplayFormatter().format(box)
    assert data['application/vnd.jupyter.widget-view+json']['model_id'] == (
        box.model_id
    ), 'Jupyter must still show the widget'
    assert data['text/plain'].startswith('Explorer('), 'text fallback kept'
    png = base64.b64decode(data['image/png'])
    assert png == box.view_png()
    _, face, strip = explorer_parts(box)
    face_w, face_h = png_size(bytes(face.value))
    strip_w, strip_h = png_size(bytes(strip.value))
    assert png_size(png) == (
        max(face_w, strip_w),
        face_h + explorer._GAP_PIXELS + strip_h,
    ), 'the picture is the large face above the strip, each at its own size'


def test_explore_picture_follows_the_view(G, monkeypatch):
    faked_kernel(monkeypatch)
    box = helpers.explore(G, Z_SIZE, seeds=(0, 1), steps=6)
    controls, face, _ = explorer_parts(box)
    first = box.view_png()
    controls['position'].value = 3
    assert box.view_png() != first, 'the picture shows the slider position'
    controls['show the whole path'].value = False
    assert png_size(box.view_png()) == png_size(bytes(face.value)), (
        'with the strip hidden the picture is the face alone'
    )


def test_stack_pngs_puts_pictures_one_above_the_other():
    from PIL import Image

    def png(width, height, colour):
        buffer = io.BytesIO()
        Image.new('RGB', (width, height), colour).save(buffer, format='PNG')
        return buffer.getvalue()

    stacked = explorer._stack_pngs([png(4, 3, 'red'), png(9, 2, 'blue')])
    image = Image.open(io.BytesIO(stacked)).convert('RGB')
    gap = explorer._GAP_PIXELS
    assert image.size == (9, 3 + gap + 2)
    assert image.getpixel((0, 0)) == (255, 0, 0)
    assert image.getpixel((8, 0)) == (255, 255, 255), 'white beside'
    assert image.getpixel((0, 3 + gap)) == (0, 0, 255)
