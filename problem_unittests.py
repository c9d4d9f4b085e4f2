"""Unit tests for the exercises of dlnd_face_generation.ipynb.

Each ``test_*`` function takes the object you wrote (a function or a class),
runs it on small made-up inputs and checks what it does, not only the shape
of what it returns. A failed check raises an AssertionError that says what was
expected, what came back, for which inputs, and the likely fix. ``Tests Passed``
is printed only after every check of that function passes.

The tests seed their own random numbers inside ``torch.random.fork_rng()``, so
calling them does not change the notebook's random stream. Models are built on
the CPU, and inputs always go to the device of the model's parameters. This file
imports nothing from the project.

An exercise that is not written yet (its body raises NotImplementedError) gets
a one-line message starting 'not written yet: ' instead of a traceback.
"""

import collections
import contextlib
import copy
import dis
import functools
import hashlib
import io
import math
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn, optim
from PIL import Image
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader

SEED = 0

# ------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------


def _fail(message):
    """Stop the test with a message written for the learner."""
    raise AssertionError(message)


def _check(condition, message):
    """Fail with message unless condition holds."""
    if not condition:
        _fail(message)


def _call(what, hint, fn, *args, **kwargs):
    """Return fn(*args, **kwargs); an error inside it becomes an
    AssertionError naming the call. hint is a string, or a function of
    the error that returns (hint, whether to keep only the error's first
    sentence). A stub's NotImplementedError goes through untouched, for
    _unit_test to report.
    """
    try:
        return fn(*args, **kwargs)
    except Exception as error:  # the learner's error, reported with its context
        if isinstance(error, NotImplementedError) and _not_written(error):
            raise
        text, brief = str(error), False
        if callable(hint):
            hint, brief = hint(error)
        if brief:  # the rest of torch's message points away from the fix
            text = text.split('\n')[0].split('. ')[0].rstrip('.') + '.'
        raise AssertionError(
            f'{what} raised {type(error).__name__}: {text}\nHint: {hint}'
        ) from error


# Code that is not the learner's: where a NotImplementedError is not a stub's
_LIBRARIES = {'torch', 'torchvision', 'PIL', 'numpy', 'tqdm', __name__}


def _frames(traceback):
    """The frames of a traceback, outermost first."""
    while traceback is not None:
        yield traceback.tb_frame
        traceback = traceback.tb_next


def _is_library(frame):
    """Whether frame runs code of torch, the standard library or this file."""
    module = frame.f_globals.get('__name__', '').split('.')[0]
    return module in _LIBRARIES or module in sys.stdlib_module_names


_RAISES = {dis.opmap.get(name) for name in ('RAISE_VARARGS', 'RERAISE')}


def _not_written(error):
    """Whether a NotImplementedError comes from a stub: a raise statement
    in the learner's code, nn.Module's for a missing forward(), or a
    DataLoader worker passing one on; not a torch operator's error.
    """
    if 'Original Traceback' in str(error):  # re-raised from a worker
        return True
    last = error.__traceback__
    while last is not None and last.tb_next is not None:
        last = last.tb_next
    if last is None:
        return False
    code = last.tb_frame.f_code
    # a raise statement, not an error from C code called on that line
    raised = 0 <= last.tb_lasti < len(code.co_code) and (
        code.co_code[last.tb_lasti] in _RAISES
    )
    return raised and (
        not _is_library(last.tb_frame)
        or code.co_name == '_forward_unimplemented'
    )


def _not_written_message(exercise, error):
    """'not written yet: <exercise> (<where> raised ...). Hint: ...'."""
    text = str(error).strip()
    if 'Original Traceback' in text:  # keep the worker's last line only
        text = text.splitlines()[-1].removeprefix('NotImplementedError:')
    text = text.strip()
    own = [f for f in _frames(error.__traceback__) if not _is_library(f)]
    code = own[-1].f_code if own else None
    where = getattr(code, 'co_qualname', getattr(code, 'co_name', exercise))
    where = where.split('.<locals>.')[-1]  # 'Discriminator.__init__'
    raised = 'NotImplementedError' + (f': {text}' if text else '')
    if where != exercise:
        raised = f'{where} raised {raised}'
    return (
        f'not written yet: {exercise} ({raised}). Hint: write it in the cell '
        f'above, then run this check again.'
    )


def _unit_test(test):
    """Run test with a fixed seed on a forked RNG; print 'Tests Passed'
    if nothing failed. A stub that raises NotImplementedError fails with
    'not written yet: ...' and no traceback.
    """
    exercise = test.__code__.co_varnames[0]  # what the learner wrote

    @functools.wraps(test)
    def run(*args, **kwargs):
        with torch.random.fork_rng():
            torch.manual_seed(SEED)
            try:
                test(*args, **kwargs)
            except NotImplementedError as error:
                if not _not_written(error):
                    raise
                message = _not_written_message(exercise, error)
                raise AssertionError(message) from None
        print('Tests Passed')

    return run


def _device_of(module, what):
    """The device of module's parameters (a model without parameters
    fails the test).
    """
    parameter = next(module.parameters(), None)
    _check(
        parameter is not None,
        f'{what} has no parameters; expected a network with learnable layers. '
        f'Hint: create the layers in __init__ and assign them to self.',
    )
    return parameter.device


def _shape(x):
    """The shape of a tensor as a plain tuple, or the type
    name of anything else.
    """
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _values(t, limit=4):
    """The first few values of a tensor, rounded, for messages."""
    values = [round(v, 4) for v in t.detach().flatten()[:limit].tolist()]
    return (
        f'[{", ".join(map(str, values))}{", ..." if t.numel() > limit else ""}]'
    )


def _check_tensor(out, what, hint):
    """Fail unless out is a tensor."""
    _check(
        isinstance(out, torch.Tensor),
        f'{what} returned {type(out).__name__}; expected a '
        f'torch.Tensor. Hint: {hint}',
    )


def _check_shape(out, expected, what, hint):
    """Fail unless out is a tensor of the expected shape."""
    _check_tensor(out, what, hint)
    _check(
        tuple(out.shape) == expected,
        f'{what} returned shape {_shape(out)}; expected '
        f'{expected}. Hint: {hint}',
    )


def _has_layer(model, kinds):
    """The first submodule of model that is an instance of kinds, or None."""
    return next((m for m in model.modules() if isinstance(m, kinds)), None)


_BATCH_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
)
# Every layer class defined in torch.nn.modules.pooling: MaxPool2d, AvgPool2d,
# Adaptive*, ...
_POOLING = tuple(
    cls
    for cls in vars(nn.modules.pooling).values()
    if isinstance(cls, type) and cls.__module__ == nn.modules.pooling.__name__
)


def _check_batch_norm(model, what, hint):
    """Fail unless model contains a batch norm layer."""
    _check(
        _has_layer(model, _BATCH_NORMS) is not None,
        f'{what} has no batch norm layer; expected nn.BatchNorm2d after some '
        f'of its (transposed) convolutions. Hint: {hint}',
    )


def _amplify(model, factor=10.0):
    """Multiply every parameter of model by factor, in place, so
    its outputs grow large.
    """
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(factor)


def _diagnosis(got, candidates):
    """Name the first common mistake whose value equals got, or say nothing."""
    for mistake, value in candidates.items():
        if math.isclose(got, value, rel_tol=1e-4, abs_tol=1e-5):
            return f' The value matches {mistake}.'
    return ''


# ------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------

_LOADER_SETTINGS = ((8, 32), (5, 16), (4, 64))  # (batch_size, image_size)


def _first_images(loader, what):
    """The images of the first batch of a fresh pass over loader."""
    batch = _call(
        f'next(iter({what}))',
        'check that each item is (image, label) with image a (3, S, S) tensor.',
        lambda: next(iter(loader)),
    )
    _check(
        isinstance(batch, (tuple, list)) and len(batch) == 2,
        f'{what} yielded {type(batch).__name__}; expected (images, labels) '
        f'pairs. Hint: make the dataset return (image, 0) for each item.',
    )
    images = batch[0]
    _check_tensor(
        images,
        f'{what} (first item of a batch)',
        'return image tensors, e.g. images[index].float() / 255.',
    )
    return images


def _range_hint(low, high):
    """The likely fix for images whose values span [low, high]."""
    if high > 1:
        return 'values look like 0..255: divide the uint8 pixels by 255.'
    if low < 0:
        return (
            'do not normalise or scale here: images stay in [0, 1] and scale() '
            'maps them to [-1, 1] in the training step.'
        )
    return 'divide the uint8 pixels by 255 once, not twice.'


def _write_faces(root, n_images=32, size=64):
    """Write n_images random JPEGs as root/celeba/*.jpg
    (the course layout); return root.
    """
    folder = Path(root) / 'celeba'
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(SEED)
    # dark to bright: values span 0..255
    ramp = torch.linspace(0, 255, size).view(1, size, 1)
    for i in range(n_images):
        colour = torch.rand(1, 1, 3, generator=generator)
        noise = torch.randn(size, size, 3, generator=generator) * 20
        pixels = (ramp * colour * 2 + noise).clamp(0, 255).to(torch.uint8)
        Image.fromarray(pixels.numpy()).save(
            folder / f'{i:06d}.jpg', quality=95
        )
    return Path(root)


# The project keeps 1 in 10 images (at most 2,600: 2,600 of the course's
# 32,600) aside for the score: those whose path under data_dir has the lowest
# SHA-1. helpers.load_faces(..., split='train') leaves them out.
_HELD_OUT_SIZE, _HELD_OUT_MAX_SHARE = 2600, 10
# Distinct flat colours (levels 64 apart) that tell the served images apart
_LEVELS = (32, 96, 160, 224)
_SPLIT_FILES = 40  # 4 held out, 36 for training: 9 batches of 4
_SPLIT_BATCH, _SPLIT_SIZE, _SPLIT_FIRST = 4, 16, 12


def _held_out(names):
    """The held-out names among names (relative POSIX paths of every image
    under data_dir), by the project's rule.
    """
    count = min(_HELD_OUT_SIZE, len(names) // _HELD_OUT_MAX_SHARE)
    by_hash = sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    return set(by_hash[:count])


def _palette(index):
    """The flat RGB colour of image number index."""
    return tuple(_LEVELS[index // 4**channel % 4] for channel in range(3))


def _write_flat_faces(root, n_images=_SPLIT_FILES, size=32):
    """Write n_images flat-coloured JPEGs as root/celeba/*.jpg, each its own
    colour; return root and the image names (relative paths), in order.
    """
    folder = Path(root) / 'celeba'
    folder.mkdir(parents=True)
    names = []
    for i in range(n_images):
        Image.new('RGB', (size, size), _palette(i)).save(
            folder / f'{i:06d}.jpg', quality=95
        )
        names.append(f'celeba/{i:06d}.jpg')
    return Path(root), names


def _served(loader, names, what):
    """The names of the images one pass over loader serves, told apart by
    their colour.
    """
    colours = torch.tensor([_palette(i) for i in range(len(names))]).float()
    served = []
    for batch in _call(
        f'iterating over {what}',
        'check that each item is (image, label) with image a (3, S, S) tensor.',
        list,
        loader,
    ):
        images = batch[0].detach().float().flatten(2).mean(2) * 255  # (N, 3)
        distance, index = (images[:, None] - colours).abs().amax(2).min(1)
        _check(
            distance.max().item() < 16,
            f'{what} served an image of mean colour '
            f'{[round(v) for v in images[distance.argmax()].tolist()]} / 255, '
            f'which matches none of the flat-coloured files in DATA_DIR; '
            f'expected each image as it is in its file, in [0, 1]. Hint: '
            f'divide the uint8 pixels by 255 and change nothing else.',
        )
        served += [names[i] for i in index.tolist()]
    return served


def _listed(names, limit=3):
    """'a, b, c and 2 more', for messages."""
    more = len(names) - limit
    return ', '.join(names[:limit]) + (f' and {more} more' if more > 0 else '')


_SPLIT_HINT = (
    "load the images with helpers.load_faces(data_dir, image_size, "
    "n_images, split='train'); with ImageFolder, pass "
    "is_valid_file=helpers.is_training_file(data_dir)."
)


def _check_split(get_dataloader, root):
    """The loader serves the training split only, all of it or its first
    n_images images, and takes n_images as its 4th parameter.
    """
    data_dir, names = _write_flat_faces(root)
    held_out = _held_out(names)
    training = [name for name in names if name not in held_out]
    for n_images in (None, _SPLIT_FIRST):
        what = (
            f'get_dataloader({_SPLIT_BATCH}, {_SPLIT_SIZE}, DATA_DIR, '
            f'{n_images})'
        )
        loader = _call(
            what,
            'take n_images as the 4th parameter, get_dataloader(batch_size, '
            'image_size, data_dir, n_images=None): the notebook calls '
            'get_dataloader(batch_size, image_size, data_dir, n_images).',
            get_dataloader,
            _SPLIT_BATCH,
            _SPLIT_SIZE,
            str(data_dir),
            n_images,
        )
        served = _served(loader, names, what)
        leaked = sorted(set(served) & held_out)
        _check(
            not leaked,
            f'{what} served {len(leaked)} of the {len(held_out)} held-out '
            f'faces of DATA_DIR ({_listed(leaked)}); expected the training '
            f'split only: the project keeps 1 in 10 faces (2,600 of the '
            f'32,600) aside to score the generator on faces it never saw. '
            f'Hint: {_SPLIT_HINT}',
        )
        expected = training[:n_images]
        if n_images is not None:
            _check(
                len(served) <= n_images,
                f'{what} served {len(served)} images in one pass; expected '
                f'the first n_images={n_images} training images only. Hint: '
                f'pass n_images on to helpers.load_faces (or keep '
                f'torch.utils.data.Subset(dataset, range(n_images))).',
            )
        missing = sorted(set(expected) - set(served))
        _check(
            not missing,
            f'{what} served {len(set(served))} different images in one pass '
            f'and never {_listed(missing)}; expected each of the '
            f'{len(expected)} {"first " * bool(n_images)}training images '
            f'(sorted by path, held-out faces left out) once. Hint: '
            f'{_SPLIT_HINT} n_images keeps the first n_images of them.',
        )


@_unit_test
def test_get_dataloader(get_dataloader):
    """get_dataloader(batch_size, image_size, data_dir, n_images) yields
    shuffled float images in [0, 1], from the training split only.

    It runs on small folders of made-up JPEGs laid out like the course data, so
    it is quick and never touches your copy of the data.
    """
    # only the verdict is printed
    with tempfile.TemporaryDirectory() as scratch, \
            contextlib.redirect_stdout(io.StringIO()):
        data_dir = _write_faces(Path(scratch) / 'faces')
        _check_loader(get_dataloader, data_dir)
        _check_split(get_dataloader, Path(scratch) / 'flat_faces')


def _check_loader(get_dataloader, data_dir):
    """Every check of test_get_dataloader, on the images under data_dir."""
    first = None
    for batch_size, image_size in _LOADER_SETTINGS:
        what = f'get_dataloader({batch_size}, {image_size}, data_dir=DATA_DIR)'
        loader = _call(
            what,
            'data_dir is the folder that holds the image folder(s).',
            get_dataloader,
            batch_size,
            image_size,
            data_dir=str(data_dir),
        )
        _check(
            isinstance(loader, DataLoader),
            f'{what} returned {type(loader).__name__}; expected a '
            f'torch DataLoader. Hint: return DataLoader(dataset, '
            f'batch_size=batch_size, shuffle=True).',
        )
        images = _first_images(loader, what)
        _check(
            images.dtype == torch.float32,
            f'{what} yielded images of dtype {images.dtype}; '
            f'expected torch.float32. Hint: convert the uint8 pixels '
            f'with .float() / 255.',
        )
        expected = (batch_size, 3, image_size, image_size)
        _check(
            tuple(images.shape) == expected,
            f'{what} yielded images of shape {_shape(images)}; '
            f'expected {expected}. Hint: pass batch_size to the '
            f'DataLoader and image_size to helpers.load_faces, and keep '
            f'all 3 colour channels.',
        )
        low, high = images.min().item(), images.max().item()
        _check(
            0 <= low and high <= 1 and high - low >= 0.5,
            f'{what} yielded images with values in [{low:.3f}, {high:.3f}]; '
            f'expected values within [0, 1] that use most of that range. '
            f'Hint: {_range_hint(low, high)}',
        )
        if first is None:
            first = (what, loader, images)
    what, loader, images = first
    again = _first_images(loader, what)
    _check(
        not torch.equal(images, again),
        f'Two passes over {what} started with the same batch; expected '
        f'shuffled batches. Hint: DataLoader(..., shuffle=True).',
    )


@_unit_test
def test_scale(scale):
    """scale(x, feature_range) maps [0, 1] linearly onto feature_range,
    without changing x.
    """
    for feature_range in (None, (-0.5, 2.0)):
        low, high = feature_range or (-1.0, 1.0)
        kwargs = (
            {} if feature_range is None else {'feature_range': feature_range}
        )
        what = (
            'scale(x)'
            if feature_range is None
            else f'scale(x, feature_range={feature_range})'
        )
        hint = 'low, high = feature_range; return x * (high - low) + low'
        for x in (torch.tensor([0.0, 0.5, 1.0]), torch.rand(2, 3, 4, 4)):
            x_before = x.clone()
            out = _call(what, hint, scale, x, **kwargs)
            _check_shape(
                out, tuple(x.shape), f'{what} for x of shape {_shape(x)}', hint
            )
            _check(
                out.dtype == x.dtype,
                f'{what} returned dtype {out.dtype} for x of dtype {x.dtype}; '
                f'expected the same dtype. Hint: {hint}',
            )
            _check(
                torch.equal(x, x_before),
                f'{what} changed its input x in place; expected x to be left '
                f'as it was. Hint: build a new tensor (x * a + b) instead '
                f'of x.mul_(...).add_(...).',
            )
            expected = x_before * (high - low) + low
            _check(
                torch.allclose(out, expected, atol=1e-6),
                f'{what} mapped {_values(x_before)} to {_values(out)}; '
                f'expected {_values(expected)}: 0 -> {low}, 1 -> '
                f'{high}. Hint: {hint}',
            )


# ------------------------------------------------------------------------------
# Networks
# ------------------------------------------------------------------------------


_Op = collections.namedtuple('_Op', 'name args kwargs out')
_CONVOLUTIONS = {'conv2d', 'conv_transpose2d'}
_ACTIVATIONS = {
    'relu', 'relu_', 'leaky_relu', 'leaky_relu_', 'elu', 'elu_', 'selu',
    'celu', 'gelu', 'silu', 'mish', 'prelu', 'rrelu', 'rrelu_', 'relu6',
    'hardtanh', 'hardswish', 'softplus',
}


class _Trace(TorchFunctionMode):
    """Logs every torch function a forward pass calls (F.conv2d,
    F.batch_norm, F.leaky_relu, ...), whether through nn layers or
    directly.
    """

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, '__name__', '')
        self.ops.append(_Op(name, args, kwargs, out))
        return out


def _trace(net, x):
    """The torch functions net(x) calls, in order."""
    with torch.no_grad(), _Trace() as trace:
        net(x)
    return trace.ops


def _channels(tensor):
    """The channel count of a (N, C, H, W) tensor, or None."""
    is_map = isinstance(tensor, torch.Tensor) and tensor.dim() == 4
    return tensor.shape[1] if is_map else None


def _slope(op):
    """The negative slope of a leaky_relu call."""
    if 'negative_slope' in op.kwargs:
        return float(op.kwargs['negative_slope'])
    return float(op.args[1]) if len(op.args) > 1 else 0.01


def _argument(op, name, position, default):
    """Argument name of a logged call, passed by keyword or at position."""
    if name in op.kwargs:
        return op.kwargs[name]
    return op.args[position] if len(op.args) > position else default


def _pair(value):
    """A convolution's stride or padding as a pair (it may be one number)."""
    if isinstance(value, (tuple, list)):
        value = tuple(int(v) for v in value)
        return value * 2 if len(value) == 1 else value
    return value if isinstance(value, str) else (int(value), int(value))


# The DCGAN convolution: kernel 4, stride 2, padding 1 (output_padding 0)
_HALVING = ((4, 4), (2, 2), (1, 1), (0, 0))


def _geometry(op, ops):
    """(kernel, stride, padding, output_padding) of a logged conv2d or
    conv_transpose2d call; padding made by an F.pad just before it (a
    padding_mode other than 'zeros') counts as the convolution's.
    """
    weight = _argument(op, 'weight', 1, None)
    kernel = tuple(weight.shape[-2:]) if weight is not None else None
    stride = _pair(_argument(op, 'stride', 3, 1))
    padding = _pair(_argument(op, 'padding', 4, 0))
    extra = (0, 0)
    if op.name == 'conv_transpose2d':
        extra = _pair(_argument(op, 'output_padding', 5, 0))
    source = _argument(op, 'input', 0, None)
    padded = next((o for o in ops if o.name == 'pad' and o.out is source), None)
    if padded is not None and padding == (0, 0):
        pad = _pair(_argument(padded, 'pad', 1, (0, 0, 0, 0)))
        padding = (pad[2], pad[0]) if len(pad) == 4 else padding
    return kernel, stride, padding, extra


def _geometry_text(geometry):
    """'kernel 3, stride 2, padding 1' (and output_padding when not 0)."""
    names = ('kernel', 'stride', 'padding', 'output_padding')
    parts = []
    for name, value in zip(names, geometry):
        if name == 'output_padding' and value == (0, 0):
            continue
        same = isinstance(value, tuple) and len(set(value)) == 1
        parts.append(f'{name} {value[0] if same else value}')
    return ', '.join(parts)


def _segment(ops, index):
    """The calls after ops[index] up to the next convolution or linear layer:
    what is applied to that layer's output.
    """
    layers = _CONVOLUTIONS | {'linear'}
    end = next(
        (i for i in range(index + 1, len(ops)) if ops[i].name in layers),
        len(ops),
    )
    return ops[index + 1 : end]


def _layer_name(ops, index, number, count, kind='convolution'):
    """'its convolution 2 of 3 (8 -> 16 channels)', for messages."""
    op = ops[index]
    source = _channels(_argument(op, 'input', 0, None))
    return (
        f'its {kind} {number} of {count} ({source} -> {_channels(op.out)} '
        f'channels)'
    )


def _gives_one_number(op):
    """Whether a layer's output is a single number per image (a logit)."""
    out = op.out
    return isinstance(out, torch.Tensor) and out.dim() > 1 and (
        out[0].numel() == 1
    )


def _check_discriminator_layers(ops, what):
    """Every convolution of D uses kernel 4, stride 2, padding 1, and all
    but the first are followed by batch norm. A last convolution that gives
    the logit itself (instead of a linear layer) is the output layer.
    """
    convolutions = [i for i, op in enumerate(ops) if op.name == 'conv2d']
    if len(convolutions) > 1 and _gives_one_number(ops[convolutions[-1]]):
        convolutions = convolutions[:-1]  # the output layer
    count = len(convolutions)
    for number, index in enumerate(convolutions, start=1):
        geometry = _geometry(ops[index], ops)
        _check(
            geometry == _HALVING,
            f'{what}: {_layer_name(ops, index, number, count)} has '
            f'{_geometry_text(geometry)}; expected kernel 4, stride 2, '
            f'padding 1 in every convolution: that halves the width and '
            f'height, and a kernel that the stride divides covers every '
            f'pixel equally often. Hint: nn.Conv2d(in_channels, '
            f'out_channels, 4, stride=2, padding=1).',
        )
    for number, index in enumerate(convolutions[1:], start=2):
        _check(
            any(op.name == 'batch_norm' for op in _segment(ops, index)),
            f'{what}: {_layer_name(ops, index, number, count)} is not '
            f'followed by batch norm; expected batch norm after every '
            f'convolution except the first: it keeps the gradients flowing '
            f'through the deeper layers. '
            f'Hint: nn.BatchNorm2d(out_channels) right after each '
            f'nn.Conv2d but the first, before the leaky ReLU.',
        )


def _is_relu(op):
    """Whether a logged call is a plain ReLU (F.relu, torch.relu_, ...)."""
    return op.name in ('relu', 'relu_')


def _activation_name(op):
    """An activation call as words: 'leaky ReLU (slope 0.2)', 'gelu'."""
    if op.name.startswith('leaky_relu'):
        return f'leaky ReLU (slope {_slope(op):g})'
    return op.name


def _check_generator_layers(ops, output, what):
    """G's transposed convolutions use kernel 4, stride 2, padding 1, and
    the projection of z and every hidden (transposed) convolution are
    followed by batch norm and ReLU. output: the index of the output layer
    (G's last transposed convolution).
    """
    layers = _CONVOLUTIONS | {'linear'}
    projection = next(i for i, op in enumerate(ops) if op.name in layers)
    transposed = [
        i
        for i, op in enumerate(ops)
        if op.name == 'conv_transpose2d' and i != projection
    ]
    count = len(transposed)
    kind = 'transposed convolution'
    for number, index in enumerate(transposed, start=1):
        geometry = _geometry(ops[index], ops)
        _check(
            geometry == _HALVING,
            f'{what}: {_layer_name(ops, index, number, count, kind)} has '
            f'{_geometry_text(geometry)}; expected kernel 4, stride 2, '
            f'padding 1 in every transposed convolution: that doubles the '
            f'width and height, and a kernel that the stride divides paints '
            f'no checkerboard pattern into the images. Hint: '
            f'nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, '
            f'padding=1).',
        )
    hidden = [
        i for i, op in enumerate(ops)
        if op.name in _CONVOLUTIONS and projection < i < output
    ]
    for index in [projection, *hidden]:
        if index == projection:
            layer = f'its first layer, the projection of z ({ops[index].name})'
        elif index in transposed:
            number = transposed.index(index) + 1
            layer = _layer_name(ops, index, number, count, kind)
        else:
            layer = f'its hidden convolution ({_channels(ops[index].out)} '
            layer += 'channels)'
        applied = _segment(ops, index)
        rule = (
            'expected batch norm and ReLU after the projection and after '
            'every hidden transposed convolution (all but the output layer)'
        )
        hint = (
            'nn.BatchNorm2d(channels), then nn.ReLU(), after the projection '
            'and after each nn.ConvTranspose2d but the last.'
        )
        _check(
            any(op.name == 'batch_norm' for op in applied),
            f'{what}: {layer} is not followed by batch norm; {rule}. '
            f'Hint: {hint}',
        )
        other = next(
            (op for op in applied if op.name in _ACTIVATIONS
             and not _is_relu(op)),
            None,
        )
        _check(
            other is None,
            f'{what} applies {_activation_name(other or ops[index])} after '
            f'{layer}; expected plain ReLU there, not leaky ReLU: the DCGAN '
            f'generator uses ReLU, the discriminator leaky ReLU. Hint: '
            f'nn.ReLU(), or F.relu(x) in forward().',
        )
        _check(
            any(_is_relu(op) for op in applied),
            f'{what}: {layer} is not followed by ReLU; {rule}. Hint: {hint}',
        )


def _check_discriminator_rules(ops, conv_dim, what):
    """D's width, batch-norm placement and activations follow the rules."""
    convolutions = [i for i, op in enumerate(ops) if op.name == 'conv2d']
    _check(
        bool(convolutions),
        f'{what} calls no 2-D convolution; expected strided nn.Conv2d '
        f'layers. Hint: nn.Conv2d(3, conv_dim, 4, stride=2, padding=1), ...',
    )
    first = convolutions[0]
    width = _channels(ops[first].out)
    _check(
        width == conv_dim,
        f'{what}: its first convolution gives {width} channels; expected '
        f'conv_dim={conv_dim}: conv_dim sets the width of the network. '
        f'Hint: nn.Conv2d(3, conv_dim, 4, stride=2, padding=1), then '
        f'conv_dim*2, conv_dim*4, ...; no fixed channel counts.',
    )
    after = next(
        (
            i
            for i, op in enumerate(ops)
            if i > first and op.name in _CONVOLUTIONS | {'linear'}
        ),
        len(ops),
    )
    _check(
        not any(op.name == 'batch_norm' for op in ops[first:after]),
        f'{what} applies batch norm right after its first convolution; '
        f'expected none there: the first layer\'s output still carries the '
        f'images\' own colours and brightness, and normalising it makes '
        f'training less stable. Hint: first convolution, then leaky ReLU; '
        f'nn.BatchNorm2d from the second convolution on.',
    )
    hint = 'nn.LeakyReLU(0.2), or F.leaky_relu(x, 0.2) in forward().'
    activations = [op for op in ops if op.name in _ACTIVATIONS]
    for op in activations:
        slope = _slope(op) if op.name.startswith('leaky_relu') else None
        if op.name.startswith('relu') and op.name != 'relu6':
            found = 'a plain ReLU (slope 0)'
        elif slope is not None and math.isclose(slope, 0.01):
            found = 'leaky ReLU with slope 0.01, nn.LeakyReLU\'s default'
        elif slope is not None and not math.isclose(slope, 0.2):
            found = f'leaky ReLU with slope {slope}'
        elif slope is None:
            found = f'{op.name}'
        else:
            continue
        _fail(
            f'{what} applies {found}; expected leaky ReLU with slope 0.2 '
            f'everywhere in D, so that some gradient flows for negative '
            f'inputs. Hint: {hint}'
        )
    _check(
        bool(activations),
        f'{what} applies no activation function; expected leaky ReLU with '
        f'slope 0.2 after its convolutions. Hint: {hint}',
    )
    _check_discriminator_layers(ops, what)


def _check_generator_rules(ops, conv_dim, what):
    """G's width and output layer follow the rules."""
    convolutions = [i for i, op in enumerate(ops) if op.name in _CONVOLUTIONS]
    _check(
        bool(convolutions),
        f'{what} calls no (transposed) convolution; expected '
        f'nn.ConvTranspose2d layers. Hint: nn.ConvTranspose2d(..., '
        f'kernel_size=4, stride=2, padding=1).',
    )
    last = convolutions[-1]  # the output layer
    # the last transposed convolution (a refining conv may follow it)
    transposed = [i for i in convolutions if ops[i].name == 'conv_transpose2d']
    widest = transposed[-1] if transposed else last
    width = _channels(ops[widest].args[0]) if ops[widest].args else None
    _check(
        width == conv_dim,
        f'{what}: its last transposed convolution takes {width} channels; '
        f'expected conv_dim={conv_dim}: conv_dim sets the width of the '
        f'network. Hint: ... conv_dim*4 -> conv_dim*2 -> conv_dim, then '
        f'nn.ConvTranspose2d(conv_dim, 3, 4, stride=2, padding=1); no fixed '
        f'channel counts.',
    )
    _check(
        not any(op.name == 'batch_norm' for op in ops[last:]),
        f'{what} applies batch norm after its last transposed convolution; '
        f'expected none on the output layer: batch norm there would force '
        f'every batch of images to the same mean and spread of colours. '
        f'Hint: nn.ConvTranspose2d(conv_dim, 3, ...) straight into tanh; '
        f'nn.BatchNorm2d only after the earlier ones.',
    )
    _check_generator_layers(ops, widest, what)


@_unit_test
def test_discriminator(Discriminator):
    """Discriminator(conv_dim): (N, 3, 32, 32) -> (N, 1) logits,
    strided convs (kernel 4, stride 2, padding 1) conv_dim wide at first,
    batch norm after every conv but the first, leaky ReLU with slope 0.2;
    Discriminator(conv_dim, 64) takes (N, 3, 64, 64) the same way.
    """
    for conv_dim in (8, 16):
        what = f'Discriminator(conv_dim={conv_dim})'
        D = _call(
            what, 'check the layer sizes in __init__.', Discriminator, conv_dim
        )
        device = _device_of(D, what)
        pooling = _has_layer(D, _POOLING)
        _check(
            pooling is None,
            f'{what} contains {pooling}; expected no pooling layers. '
            f'Hint: halve the size with nn.Conv2d(..., kernel_size=4, '
            f'stride=2, padding=1) instead.',
        )
        _check_batch_norm(
            D, what, 'add nn.BatchNorm2d after every conv layer but the first.'
        )
        for n in (2, 8):
            x = torch.rand(n, 3, 32, 32, device=device) * 2 - 1
            call = f'{what} for input {_shape(x)}'
            hint = (
                'flatten the last feature map and end with nn.Linear(..., 1).'
            )
            out = _call(call, hint, D, x)
            _check_shape(out, (n, 1), call, f'one logit per image; {hint}')
        x.requires_grad_(True)
        out = D(x)
        grad = (
            torch.autograd.grad(out.sum(), x, allow_unused=True)[0]
            if out.requires_grad
            else None
        )
        _check(
            grad is not None and grad.abs().sum().item() > 0,
            f'{what}: the output has no gradient with respect to the '
            f'input images; expected gradients to flow back to the images. '
            f'Hint: no .detach(), .item() or torch.no_grad() inside forward().',
        )
        _amplify(D)
        out = D(x.detach())
        low, high = out.min().item(), out.max().item()
        _check(
            low < 0 or high > 1,
            f'After multiplying every parameter of {what} by 10, '
            f'all its outputs stayed in [0, 1] (min {low:.3f}, max '
            f'{high:.3f}); expected raw logits, which can be any number. '
            f'Hint: remove the final sigmoid; the losses apply it themselves '
            f'(F.binary_cross_entropy_with_logits).',
        )
        _check_discriminator_rules(_trace(D, x.detach()), conv_dim, what)
    _check_discriminator_64(Discriminator)


_SIZE_64 = 64  # the other image size the networks must be built for


def _check_discriminator_64(Discriminator, conv_dim=8, n=2):
    """Discriminator(conv_dim, 64) maps (N, 3, 64, 64) to (N, 1), by the
    same rules.
    """
    what = f'Discriminator({conv_dim}, image_size={_SIZE_64})'
    D = _call(
        what,
        'take image_size as the 2nd parameter, Discriminator(conv_dim, '
        'image_size=32): build_networks calls Discriminator(conv_dim, '
        'image_size).',
        Discriminator,
        conv_dim,
        _SIZE_64,
    )
    x = torch.rand(n, 3, _SIZE_64, _SIZE_64, device=_device_of(D, what))
    x = x * 2 - 1
    call = f'{what} for input {_shape(x)}'
    hint = (
        f'built for image_size={_SIZE_64}, the same class must take '
        f'{_SIZE_64}x{_SIZE_64} images: work out the number of stride-2 '
        f'steps from image_size (n_resolution_steps(image_size)) and size '
        f'the layers from it, with nothing fixed for 32x32; one logit per '
        f'image.'
    )
    out = _call(call, hint, D, x)
    _check_shape(out, (n, 1), call, hint)
    _check_discriminator_rules(_trace(D, x), conv_dim, what)


@_unit_test
def test_generator(Generator):
    """Generator(z_size, conv_dim): (N, z_size) -> (N, 3, 32, 32)
    images in [-1, 1], a function of z, conv_dim channels before the
    output layer, which has no batch norm; transposed convs with kernel 4,
    stride 2, padding 1; batch norm and ReLU after the projection and every
    hidden layer; Generator(z_size, conv_dim, 64) makes (N, 3, 64, 64).
    """
    for z_size, conv_dim in ((16, 8), (100, 16)):
        what = f'Generator(z_size={z_size}, conv_dim={conv_dim})'
        G = _call(
            what,
            'check the layer sizes in __init__.',
            Generator,
            z_size,
            conv_dim,
        )
        device = _device_of(G, what)
        _check_batch_norm(
            G,
            what,
            'add nn.BatchNorm2d after every transposed conv but the last.',
        )
        for n in (2, 6):
            z = torch.randn(n, z_size, device=device)
            call = f'{what} for z of shape {_shape(z)}'
            hint = (
                'start from a (N, conv_dim*4, 4, 4) map and double it three '
                'times with nn.ConvTranspose2d(..., kernel_size=4, stride=2, '
                'padding=1), ending with 3 channels.'
            )
            out = _call(call, hint, G, z)
            _check_shape(out, (n, 3, 32, 32), call, hint)
            low, high = out.min().item(), out.max().item()
            _check(
                -1 <= low < 0 and high <= 1,
                f'{call} gave values in [{low:.3f}, {high:.3f}]; expected '
                f'values within [-1, 1], some of them negative, like the '
                f'scaled real images. Hint: end with nn.Tanh().',
            )
            difference = (out[0] - out[1]).abs().max().item()
            _check(
                difference > 1e-4,
                f'{call} gave the same image for two different z (largest '
                f'pixel difference {difference:.2g}); expected each z to give '
                f'its own image. Hint: compute the first layer from z.',
            )
        G.eval()  # batch norm from running statistics, dropout off
        again = _call(f'{what}.eval() for z', hint, G, z)
        once_more = G(z)
        difference = (again - once_more).abs().max().item()
        _check(
            difference <= 1e-5,
            f'{what}.eval() gave two different images for the same z '
            f'(largest pixel difference {difference:.2g}); expected G to be '
            f'a function of z, as the fixed-z samples and the explorer '
            f'need. Hint: no torch.randn or F.dropout (it is on even in '
            f'eval mode unless given training=self.training) in forward(); '
            f'all the randomness is in z.',
        )
        G.train()
        _check_generator_rules(_trace(G, z), conv_dim, what)
        _amplify(G)
        out = G(z)
        low, high = out.min().item(), out.max().item()
        _check(
            -1 <= low and high <= 1,
            f'After multiplying every parameter of {what} by 10, its outputs '
            f'spanned [{low:.3f}, {high:.3f}]; expected [-1, 1] whatever the '
            f'weights. Hint: end with nn.Tanh().',
        )
    _check_generator_64(Generator)


def _check_generator_64(Generator, z_size=16, conv_dim=8, n=2):
    """Generator(z_size, conv_dim, 64) makes (N, 3, 64, 64) images, by the
    same rules.
    """
    what = f'Generator({z_size}, {conv_dim}, image_size={_SIZE_64})'
    G = _call(
        what,
        'take image_size as the 3rd parameter, Generator(z_size, conv_dim, '
        'image_size=32): build_networks calls Generator(z_size, conv_dim, '
        'image_size).',
        Generator,
        z_size,
        conv_dim,
        _SIZE_64,
    )
    z = torch.randn(n, z_size, device=_device_of(G, what))
    call = f'{what} for z of shape {_shape(z)}'
    hint = (
        f'built for image_size={_SIZE_64}, the same class must make '
        f'{_SIZE_64}x{_SIZE_64} images: work out the number of doublings '
        f'from image_size (n_resolution_steps(image_size)) and size the '
        f'layers from it, with nothing fixed for 32x32.'
    )
    out = _call(call, hint, G, z)
    _check_shape(out, (n, 3, _SIZE_64, _SIZE_64), call, hint)
    _check_generator_rules(_trace(G, z), conv_dim, what)


# ------------------------------------------------------------------------------
# Weight initialisation
# ------------------------------------------------------------------------------


def _init_test_model():
    """Layers with 65,536 weights each (enough to measure a std) whose
    default std is not 0.02.
    """
    return nn.Sequential(
        nn.Conv2d(16, 256, 4),  # default init std 0.036
        # default std 0.036; no bias to zero
        nn.ConvTranspose2d(256, 16, 4, bias=False),
        nn.Linear(64, 1024),  # default std 0.072
        nn.BatchNorm2d(64),  # must be left alone
    )


@_unit_test
def test_weights_init_normal(weights_init_normal):
    """Conv, transposed conv and linear weights ~ N(0, 0.02), biases 0,
    batch norm untouched.
    """
    model = _init_test_model()
    batch_norm = model[-1]
    # recognisable values, to see whether batch norm is changed
    with torch.no_grad():
        batch_norm.weight.fill_(0.7)
        batch_norm.bias.fill_(0.3)
    hint = (
        'for nn.Conv2d, nn.ConvTranspose2d and nn.Linear: '
        'nn.init.normal_(m.weight, 0.0, 0.02), and nn.init.zeros_(m.bias) '
        'if m.bias is not None.'
    )
    _call(
        'model.apply(weights_init_normal)',
        hint,
        model.apply,
        weights_init_normal,
    )
    for layer in model[:-1]:
        what = f'After model.apply(weights_init_normal), {layer}'
        weight = layer.weight.detach()
        mean, std = weight.mean().item(), weight.std().item()
        _check(
            abs(mean) < 1e-3 and 0.019 <= std <= 0.021,
            f'{what} has weights with mean {mean:.4f} and std {std:.4f}; '
            f'expected mean 0 and std 0.02 (from {weight.numel()} '
            f'weights). Hint: {hint}',
        )
        tails = ((weight - mean).abs() > 2 * std).float().mean().item()
        _check(
            0.035 <= tails <= 0.056,
            f'{what} has {tails:.1%} of its weights beyond 2 std of the '
            f'mean; expected about 4.6%, as for a normal distribution. '
            f'Hint: nn.init.normal_, not uniform_.',
        )
        if layer.bias is not None:
            _check(
                torch.count_nonzero(layer.bias).item() == 0,
                f'{what} has biases {_values(layer.bias)}; expected '
                f'all 0. Hint: {hint}',
            )
    untouched = torch.all(batch_norm.weight == 0.7) and torch.all(
        batch_norm.bias == 0.3
    )
    _check(
        untouched,
        f'model.apply(weights_init_normal) changed {batch_norm}: weight '
        f'{_values(batch_norm.weight)}, bias {_values(batch_norm.bias)}; '
        f'expected batch norm to be left alone (we set weight 0.7, bias 0.3). '
        f'Hint: only initialise nn.Conv2d, nn.ConvTranspose2d and nn.Linear.',
    )


# ------------------------------------------------------------------------------
# Losses and optimizers
# ------------------------------------------------------------------------------

_KNOWN_LOGITS = (-2.0, 0.0, 1.0, 3.0)


def _bce_with_logits(logits, target):
    """Mean binary cross-entropy of sigmoid(logits) against target,
    written out with math.
    """
    # -[t*log(sigmoid(x)) + (1-t)*log(1-sigmoid(x))] simplifies to
    # log(1 + e^x) - t*x
    return sum(math.log1p(math.exp(x)) - target * x for x in logits) / len(
        logits
    )


def _loss_mistakes(logits, target):
    """The value a loss returns for common mistakes, by name."""
    sigmoid = [1 / (1 + math.exp(-x)) for x in logits]
    mistakes = {
        f'label {other} instead of {target}': _bce_with_logits(logits, other)
        for other in (1.0, 0.9, 0.1, 0.0)
        if other != target
    }
    mistakes.update(
        {
            'the sum over the batch instead of the mean': _bce_with_logits(
                logits, target
            )
            * len(logits),
            (
                'a sigmoid applied to the logits before the BCE-with-logits '
                'loss (applied twice)'
            ): _bce_with_logits(sigmoid, target),
            'mean squared error': sum((s - target) ** 2 for s in sigmoid)
            / len(logits),
        }
    )
    return mistakes


def _check_loss(loss_fn, name, target, **kwargs):
    """loss_fn(D_out, **kwargs) is the mean BCE-with-logits of
    D_out against target.
    """
    arguments = ''.join(f', {key}={value}' for key, value in kwargs.items())
    hint = (
        f'return F.binary_cross_entropy_with_logits(D_out, labels) with '
        f'labels = torch.full_like(D_out, {target}).'
    )
    for logits in (_KNOWN_LOGITS, tuple(torch.randn(7).mul(3).tolist())):
        D_out = torch.tensor(logits).view(-1, 1).requires_grad_()
        what = (
            f'{name}(D_out{arguments}) for D_out of shape '
            f'{_shape(D_out)} = {_values(D_out)}'
        )
        loss = _call(what, hint, loss_fn, D_out, **kwargs)
        _check_shape(
            loss, (), what, f'a single number, the mean over the batch; {hint}'
        )
        _check(
            loss.requires_grad,
            f'{what} returned a tensor without a gradient; expected one that '
            f'backward() can use. Hint: compute it with torch operations on '
            f'D_out, no .item() or .detach().',
        )
        expected = _bce_with_logits(logits, target)
        _check(
            math.isclose(loss.item(), expected, rel_tol=1e-4, abs_tol=1e-5),
            f'{what} returned {loss.item():.5f}; expected {expected:.5f}, '
            f'the mean binary cross-entropy of the logits against label '
            f'{target}.'
            f'{_diagnosis(loss.item(), _loss_mistakes(logits, target))} '
            f'Hint: {hint}',
        )


@_unit_test
def test_real_loss(real_loss):
    """real_loss(D_out, smooth) is BCE with logits against 1, or 0.9
    when smooth is True.
    """
    _check_loss(real_loss, 'real_loss', 1.0)
    _check_loss(real_loss, 'real_loss', 1.0, smooth=False)
    _check_loss(real_loss, 'real_loss', 0.9, smooth=True)


@_unit_test
def test_fake_loss(fake_loss):
    """fake_loss(D_out) is BCE with logits against 0."""
    _check_loss(fake_loss, 'fake_loss', 0.0)


def _small_gan():
    """A small (D, G) pair of plain modules: D scores 12 numbers,
    G makes 12 from 4.
    """
    D = nn.Sequential(
        nn.Linear(12, 8), nn.BatchNorm1d(8), nn.LeakyReLU(0.2), nn.Linear(8, 1)
    )
    G = nn.Sequential(
        nn.Linear(4, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 12),
        nn.Tanh(),
    )
    return D, G


def _check_optimizer(optimizer, label, own, nets, lr, betas, what):
    """optimizer is Adam with lr and betas, and holds exactly the
    parameters of nets[own].
    """
    hint = f'optim.Adam({own}.parameters(), lr=lr, betas=betas)'
    _check(
        type(optimizer) is optim.Adam,
        f'{what} returned {type(optimizer).__name__} as {label}; expected '
        f'torch.optim.Adam. Hint: {hint}',
    )
    for group in optimizer.param_groups:
        got = (float(group['lr']), tuple(float(b) for b in group['betas']))
        _check(
            math.isclose(got[0], lr) and all(map(math.isclose, got[1], betas)),
            f'{what}: {label} has lr={got[0]}, betas={got[1]}; expected '
            f'lr={lr}, betas={betas}. Hint: {hint}',
        )
    held = {id(p) for group in optimizer.param_groups for p in group['params']}
    counts = ', '.join(
        f'{sum(id(p) in held for p in net.parameters())} of the '
        f'{len(list(net.parameters()))} parameters of {name}'
        for name, net in nets.items()
    )
    _check(
        held == {id(p) for p in nets[own].parameters()},
        f'{what}: {label} holds {counts}; expected all of {own}\'s parameters '
        f'and nothing else. Hint: {hint}',
    )


@_unit_test
def test_optimizers(build_optimizers):
    """build_optimizers(D, G, lr, betas) -> (Adam over D's
    parameters, Adam over G's).
    """
    for lr, betas in ((2e-4, (0.5, 0.999)), (1e-3, (0.9, 0.99))):
        D, G = _small_gan()
        nets = {'D': D, 'G': G}
        what = f'build_optimizers(D, G, lr={lr}, betas={betas})'
        hint = 'return d_optimizer, g_optimizer'
        result = _call(what, hint, build_optimizers, D, G, lr, betas)
        _check(
            isinstance(result, (tuple, list)) and len(result) == 2,
            f'{what} returned {type(result).__name__}; expected a pair '
            f'(d_optimizer, g_optimizer). Hint: {hint}',
        )
        _check_optimizer(result[0], 'd_optimizer', 'D', nets, lr, betas, what)
        _check_optimizer(result[1], 'g_optimizer', 'G', nets, lr, betas, what)


# ------------------------------------------------------------------------------
# Training step
# ------------------------------------------------------------------------------

_TINY_IMAGE = (3, 4, 4)  # tiny images keep the training-step test fast
# not the notebook's z_size: train_step must use its z_size argument
_TINY_Z = 6
# gradients "left over from the previous step", for zero_grad() to clear
_STALE_GRAD = 0.5
# One logged event: a network call ('D'/'G': input x, output out, and
# whether out is tracked by autograd) or an optimizer step ('D step'/'G step':
# both networks' parameters and the stepped network's gradients).
_Event = collections.namedtuple(
    '_Event', 'kind x out params grads tracked', defaults=(None,) * 5
)

# The three classic mistakes of a GAN training step, each named with its fix
_NOT_DETACHED = (
    'a classic GAN mistake: the fakes were not detached for D\'s step. '
    'Without .detach(), d_loss.backward() also runs back through G: it adds '
    'D\'s loss to G\'s gradients, or frees G\'s graph so that '
    'g_loss.backward() fails (retain_graph=True is not the fix). Fix: '
    'd_loss = real_loss(D(real_images), smooth) + '
    'fake_loss(D(fake_images.detach())).'
)
_NO_GRAD_FAKES = (
    'a classic GAN mistake: the fakes were made under torch.no_grad() (or '
    'detached) and then used for G\'s step too, so g_loss has no path back '
    'to G and G learns nothing. Fix: make fake_images = G(z) with gradients '
    'on, and detach them only inside D\'s loss: '
    'fake_loss(D(fake_images.detach())).'
)
_STALE_D = (
    'a classic GAN mistake: G\'s loss came from D\'s verdict before '
    'd_optimizer.step(), so G learns from the old D (and the step changes '
    'the weights that g_loss.backward() needs). Fix: after '
    'd_optimizer.step(), call D again: g_loss = real_loss(D(fake_images)).'
)


def _train_step_hint(error):
    """The likely fix for an error raised inside train_step, and whether
    it is one of the classic mistakes.
    """
    text = str(error)
    for symptom, mistake in (
        ('backward through the graph a second time', _NOT_DETACHED),
        ('modified by an inplace operation', _STALE_D),
        ('does not require grad', _NO_GRAD_FAKES),
    ):
        if symptom in text:
            return mistake, True
    return (
        'use the arguments passed in (z_size, networks, optimizers) and make '
        'z on real_images.device.'
    ), False


def _tiny_discriminator():
    """D(x) = 4 * mean pixel: positive for the bright real images,
    negative for the fakes.
    """
    D = nn.Sequential(nn.Flatten(), nn.Linear(48, 1))
    with torch.no_grad():
        D[1].weight.fill_(4 / 48)
        D[1].bias.zero_()
    return D


def _tiny_generator():
    """z (N, 6) -> dark images (N, 3, 4, 4) in [-1, 1], most pixels
    near -0.9.
    """
    G = nn.Sequential(
        nn.Linear(_TINY_Z, 48), nn.Tanh(), nn.Unflatten(1, _TINY_IMAGE)
    )
    with torch.no_grad():
        G[0].weight.normal_(0.0, 0.1)
        G[0].bias.fill_(-1.5)
    return G


class _Recorder(nn.Module):
    """Wraps a network and appends each call (name, input, output)
    to a shared log.
    """

    def __init__(self, name, net, log):
        super().__init__()
        self.name, self.net, self.log = name, net, log

    def forward(self, x):
        out = self.net(x)
        self.log.append(
            _Event(
                self.name,
                x.detach().clone(),
                out.detach().clone(),
                tracked=out.requires_grad,
            )
        )
        return out


def _snapshot(net):
    """Copies of net's parameter values."""
    return [p.detach().clone() for p in net.parameters()]


def _log_steps(optimizer, kind, net, nets, log):
    """Log every optimizer.step(): all parameters and net's gradients
    just before the update.
    """

    def before_step(optimizer, args, kwargs):
        grads = [
            None if p.grad is None else p.grad.detach().clone()
            for p in net.parameters()
        ]
        params = {name: _snapshot(each) for name, each in nets.items()}
        log.append(_Event(kind, params=params, grads=grads))

    optimizer.register_step_pre_hook(before_step)


def _with_parameters(net, values):
    """A copy of net holding the given parameter values."""
    net = copy.deepcopy(net)
    with torch.no_grad():
        for parameter, value in zip(net.parameters(), values):
            parameter.copy_(value)
    return net


def _bce(logits, target):
    """Mean binary cross-entropy of sigmoid(logits) against a constant
    target, as a tensor.
    """
    return (F.softplus(logits) - target * logits).mean()


def _same(a, b):
    """Whether tensors a and b hold the same values (up to rounding)."""
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-6)


def _two_numbers(result, what):
    """The (d_loss, g_loss) that train_step returned, as two finite floats."""
    hint = 'return d_loss.item(), g_loss.item()'
    _check(
        isinstance(result, (tuple, list)) and len(result) == 2,
        f'{what} returned {type(result).__name__}; expected a pair '
        f'(d_loss, g_loss) of numbers. Hint: {hint}',
    )
    try:
        numbers = tuple(
            float(v.detach() if isinstance(v, torch.Tensor) else v)
            for v in result
        )
    except (TypeError, ValueError, RuntimeError):
        _fail(
            f'{what} returned ({", ".join(type(v).__name__ for v in result)}); '
            f'expected two numbers (d_loss, g_loss). Hint: {hint}'
        )
    _check(
        all(map(math.isfinite, numbers)),
        f'{what} returned {numbers}; expected two finite losses. Hint: {hint}',
    )
    _check(
        all(isinstance(value, float) for value in result),
        f'{what} returned ({", ".join(type(v).__name__ for v in result)}); '
        f'expected two Python floats: a loss tensor keeps its whole graph '
        f'(and its memory) alive, and the loss plot after training needs '
        f'plain numbers. Hint: {hint}',
    )
    return numbers


def _check_precision(log, amp_dtype, what):
    """Every D and G forward pass ran in amp_dtype (float32 for None)."""
    expected = amp_dtype or torch.float32
    wrong = {}
    for event in log:
        if event.kind in ('D', 'G') and event.out.dtype != expected:
            wrong.setdefault(event.kind, event.out.dtype)
    ran = ' and '.join(f'{kind} gave {dtype}' for kind, dtype in wrong.items())
    hint = (
        'with torch.autocast(real_images.device.type, dtype=amp_dtype, '
        'enabled=amp_dtype is not None): around the forward passes and the '
        'losses, not the backward passes.'
    )
    _check(
        not wrong or amp_dtype is not None,
        f'{what}: {ran} outputs; expected float32 when amp_dtype is None: '
        f'autocast only when an amp_dtype is given. Hint: {hint}',
    )
    _check(
        not wrong,
        f'{what}: {ran} outputs; expected {expected} outputs under '
        f'autocast in every forward pass of D and G. Hint: {hint}',
    )


def _check_stepped(name, net, start, log, what):
    """net's parameters changed, through its optimizer; return the
    log index of that step.
    """
    optimizer = f'{name.lower()}_optimizer'
    changed = any(
        not torch.equal(a, b) for a, b in zip(start, net.parameters())
    )
    _check(
        changed,
        f'{what} left {name}\'s parameters unchanged; expected one '
        f'update of {name}. Hint: call {optimizer}.zero_grad(), '
        f'{name.lower()}_loss.backward(), {optimizer}.step().',
    )
    step = next(
        (i for i, event in enumerate(log) if event.kind == f'{name} step'), None
    )
    _check(
        step is not None,
        f'{what} changed {name}\'s parameters without calling '
        f'{optimizer}.step(); expected the optimizer passed in to make the '
        f'update. Hint: call {optimizer}.step().',
    )
    return step


def _find_real_call(log, real_images, what):
    """The D call whose input is the real batch scaled to [-1, 1]."""
    calls = [event for event in log if event.kind == 'D']
    found = next(
        (event for event in calls if _same(event.x, real_images * 2 - 1)), None
    )
    if found is None:
        unscaled = any(_same(event.x, real_images) for event in calls)
        seen = '; '.join(
            f'{_shape(event.x)} in [{event.x.min().item():.2f}, '
            f'{event.x.max().item():.2f}]'
            for event in calls
        )
        _fail(
            f'{what}: D never received the real images scaled to [-1, 1] '
            f'(real_images in [0.2, 1] should become [-0.6, 1]); D was called '
            f'on: {seen or "nothing"}. Hint: '
            + (
                'call D(scale(real_images)); the loader gives images in [0, 1].'
                if unscaled
                else (
                    'call D on scale(real_images) alone and on the fakes in '
                    'another call.'
                )
            )
        )
    return found


def _gradients(loss, net):
    """The gradients of loss for net's parameters (zeros where unused)."""
    grads = torch.autograd.grad(
        loss, list(net.parameters()), allow_unused=True
    )
    return [
        torch.zeros_like(p) if g is None else g
        for p, g in zip(net.parameters(), grads)
    ]


def _check_gradients(loss, net, grads, what, loss_name, hint, mistakes=()):
    """grads (logged at an optimizer step) equal the gradients of loss
    for net's parameters. mistakes: (extra gradients, hint) pairs; when
    grads equal the expected ones plus an extra, that hint is given.
    """
    expected = _gradients(loss, net)
    grads = [
        torch.zeros_like(e) if g is None else g
        for g, e in zip(grads, expected)
    ]
    size = max(e.abs().max().item() for e in expected)

    def error(extra):
        return max(
            (g - e - x).abs().max().item()
            for g, e, x in zip(grads, expected, extra)
        )

    found = error([0] * len(grads))
    if found > 1e-5 + 1e-4 * size:
        hint = next(
            (h for extra, h in mistakes if error(extra) <= 1e-5 + 1e-4 * size),
            hint,
        )
        _fail(
            f'{what}: the gradients differ from those of {loss_name} alone by '
            f'up to {found:.3g} (largest expected gradient {size:.3g}). '
            f'Hint: {hint}'
        )


def _check_discriminator_step(log, step, real_call, d_loss, smooth, what):
    """d_loss = real_loss(D(real), smooth) + fake_loss(D(fake)), and D
    stepped on its gradients.
    """
    # D's loss comes from the calls since the last optimizer step
    begin = max(
        (i + 1 for i, e in enumerate(log[:step]) if e.kind.endswith('step')),
        default=0,
    )
    others = [
        e for e in log[begin:step] if e.kind == 'D' and e is not real_call
    ]
    real_seen = any(e is real_call for e in log[begin:step])
    _check(
        real_seen and len(others) == 1,
        f'{what}: before d_optimizer.step(), D was called '
        f'{len(others)} time(s) on images other than the real '
        f'batch{"" if real_seen else " (and not on it)"}; expected '
        f'one call on scale(real_images) and one on G\'s images. '
        f'Hint: d_loss = real_loss(D(real_images), smooth) + '
        f'fake_loss(D(fake_images.detach())).',
    )
    label = 0.9 if smooth else 1.0
    real, fake = real_call.out, others[0].out
    expected = (_bce(real, label) + _bce(fake, 0.0)).item()
    mistakes = {
        'real and fake labels swapped': (
            _bce(real, 0.0) + _bce(fake, label)
        ).item(),
        'smooth not passed on to real_loss': (
            _bce(real, 1.0) + _bce(fake, 0.0)
        ).item(),
        'the average (real + fake) / 2 instead of the sum': expected / 2,
        'real_loss alone': _bce(real, label).item(),
    }
    _check(
        math.isclose(d_loss, expected, rel_tol=1e-4, abs_tol=1e-5),
        f'{what} returned d_loss={d_loss:.5f}; for the outputs D gave, '
        f'real_loss(D(real), smooth={smooth}) + fake_loss(D(fake)) = '
        f'{expected:.5f}.{_diagnosis(d_loss, mistakes)} Hint: real images get '
        f'the real label (real_loss, passing smooth on) and generated images '
        f'the fake label (fake_loss).',
    )
    D = _with_parameters(_tiny_discriminator(), log[step].params['D'])
    loss = _bce(D(real_call.x), label) + _bce(D(others[0].x), 0.0)
    _check_gradients(
        loss,
        D,
        log[step].grads,
        f'{what}, D at d_optimizer.step()',
        'd_loss',
        'call d_optimizer.zero_grad() before d_loss.backward(), to clear the '
        'gradients left from the previous step.',
    )
    return others[0]


def _check_generator_step(log, d_step, g_step, g_loss, fake_call, what):
    """g_loss = real_loss(D(G(z))) on the updated D, and G stepped on
    exactly its gradients. fake_call: D's call on the fakes in its step.
    """
    made = [e for e in log[:g_step] if e.kind == 'G']
    judged = [
        e
        for e in log[d_step + 1 : g_step]
        if e.kind == 'D' and any(_same(e.x, g.out) for g in made)
    ]
    _check(
        judged,
        f'{what}: D did not judge images from G between d_optimizer.step() '
        f'and g_optimizer.step(); expected the generator\'s loss to '
        f'come from the updated D. Hint: {_STALE_D}',
    )
    out = judged[-1].out
    z = next(g.x for g in made if _same(judged[-1].x, g.out))
    expected = _bce(out, 1.0).item()
    mistakes = {
        'fake_loss (label 0) instead of real_loss': _bce(out, 0.0).item(),
        'the smoothed label 0.9 instead of 1': _bce(out, 0.9).item(),
    }
    _check(
        math.isclose(g_loss, expected, rel_tol=1e-4, abs_tol=1e-5),
        f'{what} returned g_loss={g_loss:.5f}; for the '
        f'outputs D gave on the fakes, real_loss(D(fake)) = '
        f'{expected:.5f}.{_diagnosis(g_loss, mistakes)} Hint: G wants D to '
        f'call its images real: g_loss = real_loss(D(fake_images)).',
    )
    params = log[g_step].params
    D = _with_parameters(_tiny_discriminator(), params['D'])
    G = _with_parameters(_tiny_generator(), params['G'])
    stale = [torch.full_like(p, _STALE_GRAD) for p in G.parameters()]
    zero_grad = (
        'call g_optimizer.zero_grad() before g_loss.backward(), to clear the '
        'gradients left from the previous step.'
    )
    mistakes = [(stale, zero_grad)]
    # Undetached fakes: d_loss.backward() also reached G through them
    source = next((g.x for g in made if _same(fake_call.x, g.out)), None)
    if source is not None:
        old_D = _with_parameters(_tiny_discriminator(), log[d_step].params['D'])
        leak = _gradients(_bce(old_D(G(source)), 0.0), G)
        both = [a + b for a, b in zip(leak, stale)]
        mistakes += [(leak, _NOT_DETACHED), (both, _NOT_DETACHED)]
    _check_gradients(
        _bce(D(G(z)), 1.0),
        G,
        log[g_step].grads,
        f'{what}, G at g_optimizer.step()',
        'g_loss',
        'call g_optimizer.zero_grad() before g_loss.backward(), and use '
        'fake_images.detach() in D\'s step.',
        mistakes,
    )


def _check_train_step(train_step, smooth):
    """Run train_step once on tiny logged networks and check every
    part of the update.
    """
    log = []
    D = _Recorder('D', _tiny_discriminator(), log)
    G = _Recorder('G', _tiny_generator(), log)
    nets = {'D': D.net, 'G': G.net}
    d_optimizer = optim.Adam(D.parameters(), lr=0.01, betas=(0.5, 0.999))
    g_optimizer = optim.Adam(G.parameters(), lr=0.01, betas=(0.5, 0.999))
    _log_steps(d_optimizer, 'D step', D.net, nets, log)
    _log_steps(g_optimizer, 'G step', G.net, nets, log)
    for parameter in [*D.parameters(), *G.parameters()]:
        parameter.grad = torch.full_like(parameter, _STALE_GRAD)
    start = {name: _snapshot(net) for name, net in nets.items()}
    # some pixels negative once scaled
    real_images = 0.2 + 0.8 * torch.rand(8, *_TINY_IMAGE)
    given = real_images.clone()
    what = (
        f'train_step(D, G, d_optimizer, g_optimizer, real_images, '
        f'z_size={_TINY_Z}, smooth={smooth})'
    )
    result = _call(
        what,
        _train_step_hint,
        train_step,
        D,
        G,
        d_optimizer,
        g_optimizer,
        real_images,
        _TINY_Z,
        smooth=smooth,
    )
    d_loss, g_loss = _two_numbers(result, what)
    _check_precision(log, None, what)
    _check(
        torch.equal(real_images, given),
        f'{what} changed real_images in place; expected the caller\'s '
        f'batch to stay in [0, 1]. Hint: real_images = scale(real_images) '
        f'makes a new tensor.',
    )
    real_call = _find_real_call(log, given, what)
    d_step = _check_stepped('D', D.net, start['D'], log, what)
    fake_call = _check_discriminator_step(
        log, d_step, real_call, d_loss, smooth, what
    )
    made = [event for event in log if event.kind == 'G']
    _check(
        not made or any(event.tracked for event in made),
        f'{what}: none of G\'s images carried a gradient back to G (G was '
        f'called {len(made)} time(s)), so g_loss.backward() cannot reach G. '
        f'Hint: {_NO_GRAD_FAKES}',
    )
    g_step = _check_stepped('G', G.net, start['G'], log, what)
    _check_generator_step(log, d_step, g_step, g_loss, fake_call, what)
    frozen = [
        name
        for name, net in nets.items()
        if not all(p.requires_grad for p in net.parameters())
    ]
    _check(
        not frozen,
        f'After {what}, some parameters of {" and ".join(frozen)} no '
        f'longer require gradients; expected both networks trainable '
        f'again for the next step. Hint: after the generator update, call '
        f'D.requires_grad_(True) (in a finally: block).',
    )


def _check_autocast(train_step, amp_dtype):
    """train_step(..., smooth, amp_dtype), called as train_epoch does: the
    forward passes run in amp_dtype, and the weights stay float32.
    """
    log = []
    D = _Recorder('D', _tiny_discriminator(), log)
    G = _Recorder('G', _tiny_generator(), log)
    d_optimizer = optim.Adam(D.parameters(), lr=0.01, betas=(0.5, 0.999))
    g_optimizer = optim.Adam(G.parameters(), lr=0.01, betas=(0.5, 0.999))
    real_images = 0.2 + 0.8 * torch.rand(8, *_TINY_IMAGE)
    what = (
        f'train_step(D, G, d_optimizer, g_optimizer, real_images, '
        f'{_TINY_Z}, False, {amp_dtype})'
    )
    result = _call(
        what,
        _train_step_hint,
        train_step,
        D,
        G,
        d_optimizer,
        g_optimizer,
        real_images,
        _TINY_Z,
        False,
        amp_dtype,
    )
    _two_numbers(result, what)
    _check_precision(log, amp_dtype, what)
    for name, net in (('D', D), ('G', G)):
        dtypes = {p.dtype for p in net.parameters()}
        _check(
            dtypes == {torch.float32},
            f'After {what}, {name}\'s parameters are '
            f'{", ".join(map(str, dtypes))}; expected them to stay float32: '
            f'autocast computes in amp_dtype but keeps the weights (and the '
            f'optimizer) in float32. Hint: no .to(amp_dtype), .half() or '
            f'.bfloat16() on the networks; torch.autocast casts.',
        )


@_unit_test
def test_train_step(train_step):
    """One D update (real -> 1, fake -> 0) then one G update (fake -> 1),
    with scaled reals; forward passes under autocast when amp_dtype is given;
    two Python floats returned.
    """
    for smooth in (False, True):
        _check_train_step(train_step, smooth)
    for amp_dtype in (torch.bfloat16, None):
        _check_autocast(train_step, amp_dtype)
