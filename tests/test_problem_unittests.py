"""problem_unittests.py passes the reference exercises (dcgan.py)
and catches wrong ones.

Each mutant below is a deliberately wrong implementation, named
<exercise>-<mistake>. It must make the matching problem_unittests function raise
an AssertionError whose message contains `match` (a phrase of the check meant to
catch it, so a mutant cannot pass by failing an earlier check) and a hint, and
'Tests Passed' must not be printed. Checks and their mutants:

  get_dataloader  DataLoader returned: returns_dataset; (images, labels):
                  images_only; float32: float64, uint8; shape:
                  ignores_batch_size, ignores_image_size, one_channel;
                  range in [0, 1]: scaled_0_255, normalized_to_minus1_1,
                  divided_by_255_twice; shuffled: not_shuffled; errors:
                  ignores_data_dir; n_images its 4th parameter:
                  no_n_images_parameter; training split only (no held-out
                  face): all_images, course_all_images; first n_images
                  training images: ignores_n_images
  scale           values: ignores_feature_range, clamps, offset_by_high; shape:
                  flattens; dtype: float64; tensor: returns_numpy; input
                  untouched: in_place
  Discriminator   shape (N, 1): flat_output, sixteen_outputs; logits:
                  sigmoid_output; no pooling: max_pool; batch norm:
                  no_batch_norm; gradient to input: detaches_input; parameters:
                  no_parameters; errors: built_for_64; width set by conv_dim:
                  width_fixed_32; no batch norm after the first conv:
                  batch_norm_after_first_conv; leaky ReLU, slope 0.2:
                  plain_relu, leaky_relu_default_slope; kernel 4, stride 2,
                  padding 1: kernel_3 (same shapes); batch norm after every
                  conv but the first: batch_norm_on_last_conv_only; built
                  for image_size=64, (N, 3, 64, 64) -> (N, 1):
                  ignores_image_size
  Generator       shape: image_size_64, image_size_16; range/negatives:
                  sigmoid_output, no_tanh; range whatever the weights:
                  no_tanh_small_init; z used: ignores_z; batch norm:
                  no_batch_norm; errors: ignores_z_size; same z, same image
                  (eval): dropout_in_forward, noise_in_forward; width set by
                  conv_dim: width_fixed_32; no batch norm on the output
                  layer: batch_norm_on_output; transposed convs with kernel
                  4, stride 2, padding 1: kernel_3_output_padding (same
                  shapes); batch norm and ReLU after the projection and
                  every hidden layer: projection_without_batch_norm_relu
                  (the course's own generator), hidden_layer_without_batch_
                  norm; plain ReLU, not leaky: leaky_relu; built for
                  image_size=64, (N, 3, 64, 64): ignores_image_size
  weights init    mean: mean_0_02; std: std_0_2, std_passed_as_mean,
                  uniform_0_02, does_nothing, conv2d_only; normal shape:
                  uniform_same_std; biases: biases_left_random; batch norm
                  untouched: batch_norm_reinitialised; errors:
                  bias_none_unchecked
  real_loss/      value: labels_swapped, sigmoid_twice, smoothing_ignored,
  fake_loss       smoothing_as_0_1, smoothing_inverted, smoothed_fakes, sum,
                  mse; scalar: unreduced, item; gradient: detached; errors:
                  no_smooth_argument
  build_optim...  pair: returns_one; Adam: sgd, adamw; lr: fixed_lr; betas:
                  default_betas; parameters: g_on_D_params, swapped,
                  first_parameter_only, both_nets_in_d
  train_step      two numbers: returns_nothing; Python floats:
                  returns_tensors; float32 when amp_dtype is None:
                  always_autocasts; input untouched: scales_in_place; scaled
                  reals: no_scaling, real_and_fake_concatenated; D stepped:
                  no_d_step; D calls: d_loss_real_only; d_loss: labels_swapped,
                  ignores_smooth, averaged_d_loss; D gradients:
                  no_d_zero_grad; G gets a gradient: fakes_under_no_grad_d_
                  not_frozen; G stepped: no_g_step; D judges again:
                  g_step_first; g_loss: fake_loss_for_g, smoothed_g_labels;
                  G gradients: no_g_zero_grad, zero_grad_once_no_detach;
                  errors: hardcoded_z_size, not_detached, fakes_under_no_grad,
                  g_loss_before_d_step; trainable afterwards: d_left_frozen;
                  autocast in amp_dtype: ignores_amp_dtype; weights stay
                  float32: casts_networks

The three classic GAN mistakes get hints of their own, whichever check meets
them (test_classic_mistake_has_its_own_hint): (a) fakes not detached for D's
step: not_detached, zero_grad_once_no_detach; (b) fakes made under
torch.no_grad(): fakes_under_no_grad, fakes_under_no_grad_d_not_frozen; (c)
G's loss from D before its step: g_loss_before_d_step, g_step_first.

Two things the train_step text asks for are deliberately not checked, as
correct steps differ there: freezing D during G's step (it changes no number;
the course's and pytorch/examples' steps leave D trainable:
udacity_style_step, nullcontext_step) and keeping the backward passes out of
autocast (under autocast they give the same numbers).

Exercises not written yet (stubs raising NotImplementedError) are in
test_problem_unittests_stubs.py.
"""

import ast
import contextlib
import functools
import hashlib
import math
import os
import re
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

import dcgan
import helpers
import problem_unittests as pu

REFERENCE = {
    'test_get_dataloader': dcgan.get_dataloader,
    'test_scale': dcgan.scale,
    'test_discriminator': dcgan.Discriminator,
    'test_generator': dcgan.Generator,
    'test_weights_init_normal': dcgan.weights_init_normal,
    'test_real_loss': dcgan.real_loss,
    'test_fake_loss': dcgan.fake_loss,
    'test_optimizers': dcgan.build_optimizers,
    'test_train_step': dcgan.train_step,
}


def run_unit_test(name, implementation):
    """Call problem_unittests.<name> on implementation."""
    getattr(pu, name)(implementation)


def mutants(name, *entries):
    """pytest params (name, implementation, match) with ids
    '<exercise>-<mistake>'.
    """
    exercise = name.removeprefix('test_')
    return [
        pytest.param(name, impl, match, id=f'{exercise}-{mistake}')
        for mistake, impl, match in entries
    ]


# ------------------------------------------------------------------------------
# get_dataloader: the reference loader, changed in one way
# ------------------------------------------------------------------------------


class Mapped(Dataset):
    """Items of a dataset with fn applied to each image."""

    def __init__(self, dataset, fn):
        self.dataset, self.fn = dataset, fn

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        return self.fn(image), label


def loader_mutant(
    fn=None,
    shuffle=True,
    batch_size=None,
    image_size=None,
    collate_fn=None,
    use_n_images=True,
):
    """A get_dataloader that wraps the reference: images changed by fn,
    fixed sizes, ...
    """

    def get_dataloader(
        batch_size_,
        image_size_,
        data_dir='processed_celeba_small/',
        n_images=None,
    ):
        reference = dcgan.get_dataloader(
            batch_size or batch_size_,
            image_size or image_size_,
            data_dir=data_dir,
            n_images=n_images if use_n_images else None,
        )
        dataset = (
            reference.dataset if fn is None else Mapped(reference.dataset, fn)
        )
        return DataLoader(
            dataset,
            batch_size=reference.batch_size,
            shuffle=shuffle,
            collate_fn=collate_fn,
        )

    return get_dataloader


def is_training_file(data_dir):
    """What helpers.is_training_file(data_dir) is to give, written out here:
    a predicate for ImageFolder(is_valid_file=...) that keeps the images of
    the 'train' split. The held-out ones are the min(2600, n // 10) of the
    n images under data_dir whose relative path has the lowest SHA-1.
    """
    root = Path(data_dir)

    def is_image(name):  # visible, at any depth, with an image extension
        visible = not any(part.startswith('.') for part in name.split('/'))
        return visible and name.lower().endswith(('.jpg', '.jpeg', '.png'))

    names = sorted(
        name
        for name in (p.relative_to(root).as_posix() for p in root.rglob('*'))
        if is_image(name)
    )
    by_hash = sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    held_out = set(by_hash[: min(2600, len(names) // 10)])

    def is_valid_file(path):
        name = Path(os.path.relpath(path, root)).as_posix()
        return is_image(name) and name not in held_out

    return is_valid_file


def course_loader(split=True, predicate=is_training_file):
    """The course's own approach: ImageFolder decoding every file with
    transforms; the held-out faces left out (split, with predicate),
    n_images kept with Subset.
    """

    def get_dataloader(
        batch_size,
        image_size,
        data_dir='processed_celeba_small/',
        n_images=None,
    ):
        transform = transforms.Compose(
            [
                transforms.Resize(image_size),
                transforms.CenterCrop(image_size),
                transforms.ToTensor(),
            ]
        )
        dataset = datasets.ImageFolder(
            data_dir,
            transform,
            is_valid_file=predicate(data_dir) if split else None,
        )
        if n_images is not None:
            dataset = Subset(dataset, range(min(n_images, len(dataset))))
        return DataLoader(dataset, batch_size=batch_size, shuffle=True)

    return get_dataloader


def all_images_loader(
    batch_size, image_size, data_dir='processed_celeba_small/', n_images=None
):
    """The reference over every image: split='all' instead of 'train'."""
    images = helpers.load_faces(data_dir, image_size, n_images, split='all')
    return DataLoader(
        dcgan.FaceDataset(images), batch_size=batch_size, shuffle=True
    )


def three_parameter_loader(
    batch_size, image_size, data_dir='processed_celeba_small/'
):
    """The reference without the n_images parameter."""
    return dcgan.get_dataloader(batch_size, image_size, data_dir)


LOADER_MUTANTS = mutants(
    'test_get_dataloader',
    (
        'returns_dataset',
        lambda b, s, data_dir: dcgan.get_dataloader(b, s, data_dir).dataset,
        'expected a torch DataLoader',
    ),
    (
        'images_only',
        loader_mutant(
            collate_fn=lambda items: torch.stack([i for i, _ in items])
        ),
        'expected (images, labels) pairs',
    ),
    ('float64', loader_mutant(lambda x: x.double()), 'expected torch.float32'),
    (
        'uint8',
        loader_mutant(lambda x: (x * 255).to(torch.uint8)),
        'expected torch.float32',
    ),
    (
        'ignores_batch_size',
        loader_mutant(batch_size=10),
        'yielded images of shape (10, 3',
    ),
    (
        'ignores_image_size',
        loader_mutant(image_size=64),
        'yielded images of shape (8, 3, 64',
    ),
    (
        'one_channel',
        loader_mutant(lambda x: x[:1]),
        'yielded images of shape (8, 1',
    ),
    (
        'scaled_0_255',
        loader_mutant(lambda x: x * 255),
        'values look like 0..255',
    ),
    (
        'normalized_to_minus1_1',
        loader_mutant(lambda x: x * 2 - 1),
        'do not normalise',
    ),
    ('divided_by_255_twice', loader_mutant(lambda x: x / 255), 'not twice'),
    (
        'not_shuffled',
        loader_mutant(shuffle=False),
        'started with the same batch',
    ),
    (
        'ignores_data_dir',
        lambda b, s, data_dir: dcgan.get_dataloader(b, s, 'no_such_folder/'),
        'raised FileNotFoundError',
    ),
    (
        'no_n_images_parameter',
        three_parameter_loader,
        'the notebook calls get_dataloader(batch_size, image_size, data_dir, '
        'n_images)',
    ),
    ('all_images', all_images_loader, 'held-out faces of DATA_DIR'),
    (
        'course_all_images',
        course_loader(split=False),
        'served 4 of the 4 held-out faces',
    ),
    (
        'ignores_n_images',
        loader_mutant(use_n_images=False),
        'served 36 images in one pass; expected the first n_images=12',
    ),
)

# ------------------------------------------------------------------------------
# scale
# ------------------------------------------------------------------------------


def in_place_scale(x, feature_range=(-1, 1)):
    """Right values, but written into x."""
    low, high = feature_range
    return x.mul_(high - low).add_(low)


SCALE_MUTANTS = mutants(
    'test_scale',
    (
        'ignores_feature_range',
        lambda x, feature_range=(-1, 1): x * 2 - 1,
        'expected [-0.5, 0.75',
    ),
    (
        'clamps',
        lambda x, feature_range=(-1, 1): dcgan.scale(x, feature_range).clamp(
            -1, 1
        ),
        'expected [-0.5, 0.75',
    ),
    (
        'offset_by_high',
        lambda x, feature_range=(-1, 1): x * 2 + feature_range[1],
        'mapped',
    ),
    (
        'flattens',
        lambda x, feature_range=(-1, 1): dcgan.scale(
            x, feature_range
        ).flatten(),
        'returned shape (96,)',
    ),
    (
        'float64',
        lambda x, feature_range=(-1, 1): dcgan.scale(x.double(), feature_range),
        'returned dtype torch.float64',
    ),
    (
        'returns_numpy',
        lambda x, feature_range=(-1, 1): dcgan.scale(x, feature_range).numpy(),
        'expected a torch.Tensor',
    ),
    ('in_place', in_place_scale, 'changed its input x in place'),
)

# ------------------------------------------------------------------------------
# Discriminator and Generator: the reference networks, changed in one way
# ------------------------------------------------------------------------------


def replace_layers(net, kind, make):
    """Replace every submodule of net that is a kind by make(); return net."""
    for name, child in net.named_children():
        if isinstance(child, kind):
            setattr(net, name, make())
        else:
            replace_layers(child, kind, make)
    return net


def rebuild_layers(net, kind, make):
    """Replace every submodule of net that is a kind by make(it); return
    net.
    """
    for name, child in net.named_children():
        if isinstance(child, kind):
            setattr(net, name, make(child))
        else:
            rebuild_layers(child, kind, make)
    return net


def edited(cls, edit):
    """A constructor like cls whose instances are changed by
    edit(instance) -> instance.
    """
    return lambda *args, **kwargs: edit(cls(*args, **kwargs))


def without_batch_norm(cls):
    """cls with every nn.BatchNorm2d replaced by nn.Identity."""
    return edited(
        cls, lambda net: replace_layers(net, nn.BatchNorm2d, nn.Identity)
    )


class SigmoidD(dcgan.Discriminator):
    def forward(self, x):
        return torch.sigmoid(super().forward(x))


class FlatD(dcgan.Discriminator):
    def forward(self, x):
        return super().forward(x).flatten()  # (N,) instead of (N, 1)


class SixteenD(dcgan.Discriminator):
    def forward(self, x):
        return super().forward(x).repeat(1, 16)  # (N, 16)


class MaxPoolD(dcgan.Discriminator):
    def __init__(self, conv_dim):
        super().__init__(conv_dim)
        # a no-op here, but a pooling layer
        self.pool = nn.MaxPool2d(kernel_size=1)

    def forward(self, x):
        return super().forward(self.pool(x))


class DetachD(dcgan.Discriminator):
    def forward(self, x):
        return super().forward(x.detach())


class FirstBatchNormD(dcgan.Discriminator):
    """Batch norm after every convolution, the first included."""

    def __init__(self, conv_dim, image_size=32):
        super().__init__(conv_dim, image_size)
        self.features[0] = dcgan.conv_block(3, conv_dim, batch_norm=True)


def without_layer(cls, path):
    """cls with its submodule at path ('features.1.1') made nn.Identity."""

    def edit(net):
        parent, _, name = path.rpartition('.')
        setattr(net.get_submodule(parent), name, nn.Identity())
        return net

    return edited(cls, edit)


def kernel_3(layer):
    """A (transposed) convolution like layer, with kernel 3 instead of 4 and
    the same output size.
    """
    settings = dict(stride=2, padding=1, bias=layer.bias is not None)
    if isinstance(layer, nn.ConvTranspose2d):  # 2n - 1 + output_padding
        return nn.ConvTranspose2d(
            layer.in_channels, layer.out_channels, 3, output_padding=1,
            **settings,
        )
    return nn.Conv2d(layer.in_channels, layer.out_channels, 3, **settings)


def activations(cls, make):
    """cls with every nn.LeakyReLU replaced by make()."""
    return edited(cls, lambda net: replace_layers(net, nn.LeakyReLU, make))


DISCRIMINATOR_MUTANTS = mutants(
    'test_discriminator',
    ('flat_output', FlatD, 'returned shape (2,); expected (2, 1)'),
    ('sixteen_outputs', SixteenD, 'returned shape (2, 16); expected (2, 1)'),
    ('sigmoid_output', SigmoidD, 'all its outputs stayed in [0, 1]'),
    ('max_pool', MaxPoolD, 'expected no pooling layers'),
    (
        'no_batch_norm',
        without_batch_norm(dcgan.Discriminator),
        'has no batch norm layer',
    ),
    ('detaches_input', DetachD, 'no gradient with respect to the input'),
    ('no_parameters', lambda conv_dim: nn.Flatten(), 'has no parameters'),
    (
        'built_for_64',
        functools.partial(dcgan.Discriminator, image_size=64),
        'raised RuntimeError',
    ),
    (
        'width_fixed_32',
        lambda conv_dim, image_size=32: dcgan.Discriminator(32, image_size),
        'its first convolution gives 32 channels; expected conv_dim=8',
    ),
    (
        'batch_norm_after_first_conv',
        FirstBatchNormD,
        'applies batch norm right after its first convolution',
    ),
    (
        'plain_relu',
        activations(dcgan.Discriminator, nn.ReLU),
        'applies a plain ReLU (slope 0); expected leaky ReLU with slope 0.2',
    ),
    (
        'leaky_relu_default_slope',
        activations(dcgan.Discriminator, nn.LeakyReLU),
        'applies leaky ReLU with slope 0.01, nn.LeakyReLU\'s default',
    ),
    # the same shapes as kernel 4: (32 + 2 - 3) // 2 + 1 = 16
    (
        'kernel_3',
        edited(
            dcgan.Discriminator,
            lambda net: rebuild_layers(net, nn.Conv2d, kernel_3),
        ),
        'its convolution 1 of 3 (3 -> 8 channels) has kernel 3, stride 2, '
        'padding 1; expected kernel 4, stride 2, padding 1 in every '
        'convolution',
    ),
    (
        'batch_norm_on_last_conv_only',
        without_layer(dcgan.Discriminator, 'features.1.1'),
        'its convolution 2 of 3 (8 -> 16 channels) is not followed by batch '
        'norm; expected batch norm after every convolution except the first',
    ),
    (
        'ignores_image_size',
        lambda conv_dim, image_size=32: dcgan.Discriminator(conv_dim),
        'Hint: built for image_size=64, the same class must take 64x64 '
        'images',
    ),
)


class IgnoresZG(dcgan.Generator):
    def forward(self, z):
        return super().forward(torch.zeros_like(z))


class DropoutG(dcgan.Generator):
    """F.dropout in forward: on in eval mode too (training=True default)."""

    def forward(self, z):
        x = F.dropout(self.project(z), 0.3)
        return self.upsample(x.view(-1, self.top_channels, 4, 4))


class NoisyG(dcgan.Generator):
    """Fresh noise added inside forward."""

    def forward(self, z):
        x = self.project(z) + 0.1 * torch.randn(len(z), 1, device=z.device)
        return self.upsample(x.view(-1, self.top_channels, 4, 4))


def last_activation(cls, make):
    """cls with its final nn.Tanh replaced by make()."""
    return edited(cls, lambda net: replace_layers(net, nn.Tanh, make))


GENERATOR_MUTANTS = mutants(
    'test_generator',
    (
        'image_size_64',
        functools.partial(dcgan.Generator, image_size=64),
        'returned shape (2, 3, 64, 64); expected (2, 3, 32, 32)',
    ),
    (
        'image_size_16',
        functools.partial(dcgan.Generator, image_size=16),
        'returned shape (2, 3, 16, 16)',
    ),
    (
        'sigmoid_output',
        last_activation(dcgan.Generator, nn.Sigmoid),
        'some of them negative',
    ),
    (
        'no_tanh',
        last_activation(dcgan.Generator, nn.Identity),
        'Hint: end with nn.Tanh()',
    ),
    # Small weights keep an un-squashed output inside [-1, 1] at first, not
    # after training.
    (
        'no_tanh_small_init',
        edited(
            last_activation(dcgan.Generator, nn.Identity),
            lambda net: net.apply(dcgan.weights_init_normal),
        ),
        'expected [-1, 1] whatever the weights',
    ),
    ('ignores_z', IgnoresZG, 'gave the same image for two different z'),
    (
        'no_batch_norm',
        without_batch_norm(dcgan.Generator),
        'has no batch norm layer',
    ),
    (
        'ignores_z_size',
        lambda z_size, conv_dim: dcgan.Generator(100, conv_dim),
        'raised RuntimeError',
    ),
    (
        'width_fixed_32',
        lambda z_size, conv_dim, image_size=32: dcgan.Generator(
            z_size, 32, image_size
        ),
        'its last transposed convolution takes 32 channels; expected '
        'conv_dim=8',
    ),
    (
        'batch_norm_on_output',
        last_activation(
            dcgan.Generator, lambda: nn.Sequential(nn.BatchNorm2d(3), nn.Tanh())
        ),
        'applies batch norm after its last transposed convolution',
    ),
    (
        'dropout_in_forward',
        DropoutG,
        'gave two different images for the same z',
    ),
    ('noise_in_forward', NoisyG, 'gave two different images for the same z'),
    (
        'leaky_relu',
        edited(
            dcgan.Generator,
            lambda net: replace_layers(
                net, nn.ReLU, lambda: nn.LeakyReLU(0.2)
            ),
        ),
        'applies leaky ReLU (slope 0.2) after its first layer, the '
        'projection of z (linear); expected plain ReLU there, not leaky ReLU',
    ),
    (
        'hidden_layer_without_batch_norm',
        without_layer(dcgan.Generator, 'upsample.3.1'),
        'its transposed convolution 2 of 3 (16 -> 8 channels) is not '
        'followed by batch norm; expected batch norm and ReLU after the '
        'projection and after every hidden transposed convolution',
    ),
    # The course's own generator: fc straight into the first transposed conv
    (
        'projection_without_batch_norm_relu',
        without_layer(without_layer(dcgan.Generator, 'upsample.0'),
                      'upsample.1'),
        'its first layer, the projection of z (linear) is not followed by '
        'batch norm',
    ),
    (
        'ignores_image_size',
        lambda z_size, conv_dim, image_size=32: dcgan.Generator(
            z_size, conv_dim
        ),
        'returned shape (2, 3, 32, 32); expected (2, 3, 64, 64). Hint: built '
        'for image_size=64',
    ),
    # the same shapes as kernel 4: (n - 1) * 2 - 2 + 3 + 1 = 2n
    (
        'kernel_3_output_padding',
        edited(
            dcgan.Generator,
            lambda net: rebuild_layers(net, nn.ConvTranspose2d, kernel_3),
        ),
        'its transposed convolution 1 of 3 (32 -> 16 channels) has kernel 3, '
        'stride 2, padding 1, output_padding 1; expected kernel 4, stride 2, '
        'padding 1 in every transposed convolution',
    ),
)

# ------------------------------------------------------------------------------
# weights_init_normal
# ------------------------------------------------------------------------------

INIT_KINDS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def init_mutant(
    m,
    weight=lambda w: nn.init.normal_(w, 0.0, 0.02),
    zero_bias=True,
    kinds=INIT_KINDS,
    check_bias=True,
    batch_norm=False,
):
    """The reference init with one thing changed (pass through
    functools.partial).
    """
    if isinstance(m, kinds):
        weight(m.weight)
        if zero_bias and (m.bias is not None or not check_bias):
            nn.init.zeros_(m.bias)
    elif batch_norm and isinstance(m, nn.BatchNorm2d):
        # what pytorch/examples does: we ask not to
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def init_with(**changes):
    """init_mutant with the given changes."""
    return functools.partial(init_mutant, **changes)


INIT_MUTANTS = mutants(
    'test_weights_init_normal',
    (
        'mean_0_02',
        init_with(weight=lambda w: nn.init.normal_(w, 0.02, 0.02)),
        'mean 0.0200',
    ),
    (
        'std_0_2',
        init_with(weight=lambda w: nn.init.normal_(w, 0.0, 0.2)),
        'std 0.2',
    ),
    (
        'std_passed_as_mean',
        init_with(weight=lambda w: nn.init.normal_(w, 0.02)),
        'std 1.0',
    ),
    (
        'uniform_0_02',
        init_with(weight=lambda w: nn.init.uniform_(w, -0.02, 0.02)),
        'std 0.01',
    ),
    (
        'uniform_same_std',
        init_with(
            weight=lambda w: nn.init.uniform_(w, -0.02 * 3**0.5, 0.02 * 3**0.5)
        ),
        'beyond 2 std',
    ),
    ('does_nothing', lambda m: None, 'std 0.03'),
    ('conv2d_only', init_with(kinds=nn.Conv2d), 'ConvTranspose2d(256, 16'),
    ('biases_left_random', init_with(zero_bias=False), 'expected all 0'),
    (
        'batch_norm_reinitialised',
        init_with(batch_norm=True),
        'to be left alone',
    ),
    (
        'bias_none_unchecked',
        init_with(check_bias=False),
        'raised AttributeError',
    ),
)

# ------------------------------------------------------------------------------
# real_loss and fake_loss
# ------------------------------------------------------------------------------


def loss_with(label, loss=F.binary_cross_entropy_with_logits):
    """A loss(D_out, smooth=False) = loss(D_out, labels) with labels
    all label(smooth).
    """

    def wrong_loss(D_out, smooth=False):
        return loss(D_out, torch.full_like(D_out, label(smooth)))

    return wrong_loss


def real_label(smooth):
    return 0.9 if smooth else 1.0


def sigmoid_then(loss):
    """loss applied to sigmoid(D_out) instead of D_out."""
    return lambda D_out, labels: loss(torch.sigmoid(D_out), labels)


def bce_sum(D_out, labels):
    return F.binary_cross_entropy_with_logits(D_out, labels, reduction='sum')


def bce_unreduced(D_out, labels):
    return F.binary_cross_entropy_with_logits(D_out, labels, reduction='none')


REAL_LOSS_MUTANTS = mutants(
    'test_real_loss',
    (
        'labels_swapped',
        loss_with(lambda smooth: 0.0),
        'label 0.0 instead of 1.0',
    ),
    (
        'sigmoid_twice',
        loss_with(real_label, sigmoid_then(F.binary_cross_entropy_with_logits)),
        'applied twice',
    ),
    (
        'smoothing_ignored',
        loss_with(lambda smooth: 1.0),
        'label 1.0 instead of 0.9',
    ),
    (
        'smoothing_as_0_1',
        loss_with(lambda smooth: 0.1 if smooth else 1.0),
        'label 0.1 instead of 0.9',
    ),
    (
        'smoothing_inverted',
        loss_with(lambda smooth: 1.0 if smooth else 0.9),
        'label 0.9 instead of 1.0',
    ),
    ('sum', loss_with(real_label, bce_sum), 'the sum over the batch'),
    (
        'mse',
        loss_with(real_label, sigmoid_then(F.mse_loss)),
        'mean squared error',
    ),
    (
        'unreduced',
        loss_with(real_label, bce_unreduced),
        'returned shape (4, 1); expected ()',
    ),
    (
        'item',
        lambda D_out, smooth=False: dcgan.real_loss(D_out, smooth).item(),
        'returned float; expected a torch.Tensor',
    ),
    (
        'detached',
        lambda D_out, smooth=False: dcgan.real_loss(D_out.detach(), smooth),
        'without a gradient',
    ),
    (
        'no_smooth_argument',
        lambda D_out: dcgan.real_loss(D_out),
        'raised TypeError',
    ),
)

FAKE_LOSS_MUTANTS = mutants(
    'test_fake_loss',
    (
        'labels_swapped',
        loss_with(lambda smooth: 1.0),
        'label 1.0 instead of 0.0',
    ),
    (
        'smoothed_fakes',
        loss_with(lambda smooth: 0.1),
        'label 0.1 instead of 0.0',
    ),
    (
        'sigmoid_twice',
        loss_with(
            lambda smooth: 0.0, sigmoid_then(F.binary_cross_entropy_with_logits)
        ),
        'applied twice',
    ),
    ('sum', loss_with(lambda smooth: 0.0, bce_sum), 'the sum over the batch'),
    (
        'mse',
        loss_with(lambda smooth: 0.0, sigmoid_then(F.mse_loss)),
        'mean squared error',
    ),
)

# ------------------------------------------------------------------------------
# build_optimizers
# ------------------------------------------------------------------------------


def optimizers_with(
    make=optim.Adam,
    d_params=lambda D, G: D.parameters(),
    g_params=lambda D, G: G.parameters(),
    lr=None,
    betas=None,
    swap=False,
):
    """A build_optimizers with one thing changed."""

    def build_optimizers(D, G, lr_, betas_):
        settings = {'lr': lr or lr_, 'betas': betas or betas_}
        d_optimizer = make(d_params(D, G), **settings)
        g_optimizer = make(g_params(D, G), **settings)
        return (
            (g_optimizer, d_optimizer) if swap else (d_optimizer, g_optimizer)
        )

    return build_optimizers


OPTIMIZER_MUTANTS = mutants(
    'test_optimizers',
    (
        'returns_one',
        lambda D, G, lr, betas: optim.Adam([*D.parameters(), *G.parameters()]),
        'expected a pair',
    ),
    (
        'sgd',
        optimizers_with(
            make=lambda params, lr, betas: optim.SGD(params, lr=lr)
        ),
        'returned SGD as d_optimizer; expected torch.optim.Adam',
    ),
    (
        'adamw',
        optimizers_with(make=optim.AdamW),
        'returned AdamW as d_optimizer',
    ),
    ('fixed_lr', optimizers_with(lr=1e-3), 'has lr=0.001'),
    (
        'default_betas',
        optimizers_with(betas=(0.9, 0.999)),
        'betas=(0.9, 0.999); expected',
    ),
    (
        'g_on_D_params',
        optimizers_with(g_params=lambda D, G: D.parameters()),
        'g_optimizer holds 6 of the 6 parameters of D, '
        '0 of the 6 parameters of G',
    ),
    (
        'swapped',
        optimizers_with(swap=True),
        'd_optimizer holds 0 of the 6 parameters of D',
    ),
    (
        'first_parameter_only',
        optimizers_with(d_params=lambda D, G: [next(D.parameters())]),
        'd_optimizer holds 1 of the 6 parameters of D',
    ),
    (
        'both_nets_in_d',
        optimizers_with(
            d_params=lambda D, G: [*D.parameters(), *G.parameters()]
        ),
        'd_optimizer holds 6 of the 6 parameters of D, '
        '6 of the 6 parameters of G',
    ),
)

# ------------------------------------------------------------------------------
# train_step
# ------------------------------------------------------------------------------


def update(optimizer, loss):
    """One optimizer update on loss; return its value."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def reference_d_loss(D, real, fake, smooth):
    return dcgan.real_loss(D(real), smooth) + dcgan.fake_loss(D(fake))


def reference_g_loss(D, fake, smooth):
    return dcgan.real_loss(D(fake))


def autocast(device, amp_dtype):
    """Mixed precision in amp_dtype, or nothing when amp_dtype is None."""
    return torch.autocast(
        device.type, dtype=amp_dtype, enabled=amp_dtype is not None
    )


def step_with(
    prepare=dcgan.scale, d_loss=reference_d_loss, g_loss=reference_g_loss
):
    """A train_step built like the reference, with the scaling
    or one loss changed.
    """

    def train_step(
        D,
        G,
        d_optimizer,
        g_optimizer,
        real_images,
        z_size,
        smooth=False,
        amp_dtype=None,
    ):
        with autocast(real_images.device, amp_dtype):
            real = prepare(real_images)
            fake = G(torch.randn(len(real), z_size, device=real.device))
            loss = d_loss(D, real, fake.detach(), smooth)
        d_value = update(d_optimizer, loss)
        with autocast(real_images.device, amp_dtype):
            loss = g_loss(D, fake, smooth)
        return d_value, update(g_optimizer, loss)

    return train_step


def concatenated_d_loss(D, real, fake, smooth):
    """One D call on real and fake together: a valid GAN, but not the
    exercise.
    """
    out = D(torch.cat([real, fake]))
    return dcgan.real_loss(out[: len(real)], smooth) + dcgan.fake_loss(
        out[len(real) :]
    )


def d_left_frozen(
    D,
    G,
    d_optimizer,
    g_optimizer,
    real_images,
    z_size,
    smooth=False,
    amp_dtype=None,
):
    """The reference step, but D is frozen for G's update and never unfrozen."""
    result = dcgan.train_step(
        D, G, d_optimizer, g_optimizer, real_images, z_size, smooth, amp_dtype
    )
    D.requires_grad_(False)
    return result


def g_step_first(
    D, G, d_optimizer, g_optimizer, real_images, z_size, smooth=False,
    amp_dtype=None,
):
    """Updates G before D, so G's loss comes from the old D."""
    fake = G(torch.randn(len(real_images), z_size))
    g_value = update(g_optimizer, dcgan.real_loss(D(fake)))
    d_value = update(
        d_optimizer,
        reference_d_loss(D, dcgan.scale(real_images), fake.detach(), smooth),
    )
    return d_value, g_value


def zero_grad_once_no_detach(
    D, G, d_optimizer, g_optimizer, real_images, z_size, smooth=False,
    amp_dtype=None,
):
    """Clears gradients once, at the start, and lets d_loss reach G
    (undetached fakes).
    """
    d_optimizer.zero_grad()
    g_optimizer.zero_grad()
    real = dcgan.scale(real_images)
    d_loss = reference_d_loss(
        D, real, G(torch.randn(len(real), z_size)), smooth
    )
    d_loss.backward()
    d_optimizer.step()
    g_loss = dcgan.real_loss(D(G(torch.randn(len(real), z_size))))
    g_loss.backward()
    g_optimizer.step()
    return d_loss.item(), g_loss.item()


class Skipping:
    """An optimizer stand-in whose named methods do nothing."""

    def __init__(self, optimizer, *skipped):
        self.optimizer, self.skipped = optimizer, skipped

    def __getattr__(self, name):
        if name in self.skipped:
            return lambda *args, **kwargs: None
        return getattr(self.optimizer, name)


def reference_with(d_skips=(), g_skips=(), **overrides):
    """The reference train_step, with optimizer methods skipped or
    arguments overridden.
    """

    def train_step(
        D,
        G,
        d_optimizer,
        g_optimizer,
        real_images,
        z_size,
        smooth=False,
        amp_dtype=None,
    ):
        arguments = {
            'z_size': z_size,
            'smooth': smooth,
            'amp_dtype': amp_dtype,
            **overrides,
        }
        return dcgan.train_step(
            D,
            G,
            Skipping(d_optimizer, *d_skips),
            Skipping(g_optimizer, *g_skips),
            real_images,
            **arguments,
        )

    return train_step


def returns_tensors(
    D, G, d_optimizer, g_optimizer, real_images, z_size, smooth=False,
    amp_dtype=None,
):
    """Right losses, returned as tensors (with their graphs)."""
    real = dcgan.scale(real_images)
    fake = G(torch.randn(len(real), z_size))
    d_loss = reference_d_loss(D, real, fake.detach(), smooth)
    update(d_optimizer, d_loss)
    g_loss = dcgan.real_loss(D(fake))
    update(g_optimizer, g_loss)
    return d_loss, g_loss


def casts_networks(
    D, G, d_optimizer, g_optimizer, real_images, z_size, smooth=False,
    amp_dtype=None,
):
    """Mixed precision by casting the networks to amp_dtype."""
    if amp_dtype is not None:
        D.to(amp_dtype)
        G.to(amp_dtype)
    return dcgan.train_step(
        D, G, d_optimizer, g_optimizer, real_images, z_size, smooth, amp_dtype
    )


def not_detached(
    D, G, d_optimizer, g_optimizer, real_images, z_size, smooth=False,
    amp_dtype=None,
):
    """Classic mistake (a): the same fakes, not detached, for both steps."""
    real = dcgan.scale(real_images)
    fake = G(torch.randn(len(real), z_size))
    d_value = update(d_optimizer, reference_d_loss(D, real, fake, smooth))
    return d_value, update(g_optimizer, dcgan.real_loss(D(fake)))


def fakes_without_gradient(freeze_D):
    """Classic mistake (b): fakes made under torch.no_grad(), used for both
    steps; D frozen for G's step (as the reference does) or not.
    """

    def train_step(
        D, G, d_optimizer, g_optimizer, real_images, z_size, smooth=False,
        amp_dtype=None,
    ):
        real = dcgan.scale(real_images)
        with torch.no_grad():
            fake = G(torch.randn(len(real), z_size))
        d_value = update(d_optimizer, reference_d_loss(D, real, fake, smooth))
        D.requires_grad_(not freeze_D)
        try:
            g_value = update(g_optimizer, dcgan.real_loss(D(fake)))
        finally:
            D.requires_grad_(True)
        return d_value, g_value

    return train_step


def g_loss_before_d_step(
    D, G, d_optimizer, g_optimizer, real_images, z_size, smooth=False,
    amp_dtype=None,
):
    """Classic mistake (c): D's verdict for G's loss taken before D's step."""
    real = dcgan.scale(real_images)
    fake = G(torch.randn(len(real), z_size))
    d_loss = reference_d_loss(D, real, fake.detach(), smooth)
    g_loss = dcgan.real_loss(D(fake))  # by the D of before the step
    return update(d_optimizer, d_loss), update(g_optimizer, g_loss)


TRAIN_STEP_MUTANTS = mutants(
    'test_train_step',
    (
        'returns_nothing',
        lambda *args, **kwargs: dcgan.train_step(*args, **kwargs) and None,
        'returned NoneType; expected a pair (d_loss, g_loss)',
    ),
    (
        'scales_in_place',
        step_with(prepare=lambda x: x.mul_(2).sub_(1)),
        'changed real_images in place',
    ),
    (
        'no_scaling',
        step_with(prepare=lambda x: x),
        'call D(scale(real_images))',
    ),
    (
        'real_and_fake_concatenated',
        step_with(d_loss=concatenated_d_loss),
        'call D on scale(real_images) alone',
    ),
    (
        'no_d_step',
        reference_with(d_skips=('step',)),
        'left D\'s parameters unchanged',
    ),
    (
        'd_loss_real_only',
        step_with(
            d_loss=lambda D, real, fake, smooth: dcgan.real_loss(
                D(real), smooth
            )
        ),
        'D was called 0 time(s) on images other than the real batch',
    ),
    (
        'labels_swapped',
        step_with(
            d_loss=lambda D, real, fake, smooth: (
                dcgan.fake_loss(D(real)) + dcgan.real_loss(D(fake), smooth)
            )
        ),
        'real and fake labels swapped',
    ),
    (
        'ignores_smooth',
        reference_with(smooth=False),
        'smooth not passed on to real_loss',
    ),
    (
        'averaged_d_loss',
        step_with(d_loss=lambda *args: reference_d_loss(*args) / 2),
        'the average (real + fake)',
    ),
    (
        'no_d_zero_grad',
        reference_with(d_skips=('zero_grad',)),
        'D at d_optimizer.step()',
    ),
    (
        'no_g_step',
        reference_with(g_skips=('step',)),
        'left G\'s parameters unchanged',
    ),
    ('g_step_first', g_step_first, 'D did not judge images from G between'),
    ('d_left_frozen', d_left_frozen, 'no longer require gradients'),
    (
        'fake_loss_for_g',
        step_with(g_loss=lambda D, fake, smooth: dcgan.fake_loss(D(fake))),
        'fake_loss (label 0) instead of real_loss',
    ),
    (
        'smoothed_g_labels',
        step_with(
            g_loss=lambda D, fake, smooth: dcgan.real_loss(D(fake), smooth)
        ),
        'the smoothed label 0.9 instead of 1',
    ),
    (
        'no_g_zero_grad',
        reference_with(g_skips=('zero_grad',)),
        'G at g_optimizer.step()',
    ),
    (
        'zero_grad_once_no_detach',
        zero_grad_once_no_detach,
        'G at g_optimizer.step()',
    ),
    ('hardcoded_z_size', reference_with(z_size=100), 'raised RuntimeError'),
    ('returns_tensors', returns_tensors, 'expected two Python floats'),
    (
        'ignores_amp_dtype',
        reference_with(amp_dtype=None),
        'expected torch.bfloat16 outputs under autocast',
    ),
    (
        'always_autocasts',
        reference_with(amp_dtype=torch.bfloat16),
        'expected float32 when amp_dtype is None',
    ),
    ('casts_networks', casts_networks, 'expected them to stay float32'),
    ('not_detached', not_detached, 'the fakes were not detached'),
    (
        'fakes_under_no_grad',
        fakes_without_gradient(freeze_D=True),
        'the fakes were made under torch.no_grad()',
    ),
    (
        'fakes_under_no_grad_d_not_frozen',
        fakes_without_gradient(freeze_D=False),
        'none of G\'s images carried a gradient back to G',
    ),
    (
        'g_loss_before_d_step',
        g_loss_before_d_step,
        'G\'s loss came from D\'s verdict before d_optimizer.step()',
    ),
)

# The three classic GAN mistakes: each mutant gets the hint naming its mistake
CLASSIC_MISTAKES = [
    pytest.param(not_detached, pu._NOT_DETACHED, id='a-not_detached'),
    pytest.param(
        zero_grad_once_no_detach,
        pu._NOT_DETACHED,
        id='a-zero_grad_once_no_detach',
    ),
    pytest.param(
        fakes_without_gradient(freeze_D=True),
        pu._NO_GRAD_FAKES,
        id='b-fakes_under_no_grad',
    ),
    pytest.param(
        fakes_without_gradient(freeze_D=False),
        pu._NO_GRAD_FAKES,
        id='b-fakes_under_no_grad_d_not_frozen',
    ),
    pytest.param(
        g_loss_before_d_step, pu._STALE_D, id='c-g_loss_before_d_step'
    ),
    pytest.param(g_step_first, pu._STALE_D, id='c-g_step_first'),
]

ALL_MUTANTS = (
    LOADER_MUTANTS
    + SCALE_MUTANTS
    + DISCRIMINATOR_MUTANTS
    + GENERATOR_MUTANTS
    + INIT_MUTANTS
    + REAL_LOSS_MUTANTS
    + FAKE_LOSS_MUTANTS
    + OPTIMIZER_MUTANTS
    + TRAIN_STEP_MUTANTS
)

# ------------------------------------------------------------------------------
# Correct alternatives to the reference: the tests must not demand the
# reference's exact code
# ------------------------------------------------------------------------------


class AllConvDiscriminator(nn.Module):
    """Ends with a 4x4 convolution to one channel instead of a linear layer."""

    def __init__(self, conv_dim, image_size=32):
        super().__init__()
        layers = [nn.Conv2d(3, conv_dim, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels, size = conv_dim, image_size // 2  # (N, conv_dim, 16, 16)
        while size > 4:  # (N, conv_dim*2, 8, 8), (N, conv_dim*4, 4, 4)
            layers += [
                nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels * 2),
                nn.LeakyReLU(0.2),
            ]
            channels, size = channels * 2, size // 2
        layers += [nn.Conv2d(channels, 1, 4), nn.Flatten()]  # (N, 1)
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class ConvOnlyGenerator(nn.Module):
    """pytorch/examples style: z as a (N, z_size, 1, 1) map,
    transposed convs only.
    """

    def __init__(self, z_size, conv_dim, image_size=32):
        super().__init__()
        channels = conv_dim * image_size // 8
        layers = [  # (N, conv_dim*4, 4, 4) for 32x32 images
            nn.ConvTranspose2d(z_size, channels, 4, 1, 0, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        ]
        while channels > conv_dim:  # (N, conv_dim*2, 8, 8), ...
            half = channels // 2
            layers += [
                nn.ConvTranspose2d(channels, half, 4, 2, 1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(),
            ]
            channels = half
        layers += [nn.ConvTranspose2d(conv_dim, 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)  # (N, 3, 32, 32)

    def forward(self, z):
        return self.net(z[:, :, None, None])


def classname_init(m):
    """pytorch/examples style, by class name (without its batch norm part)."""
    if m.__class__.__name__.find('Conv') != -1 or isinstance(m, nn.Linear):
        nn.init.normal_(m.weight.data, 0.0, 0.02)
        if m.bias is not None:
            m.bias.data.fill_(0)


def sigmoid_bce_real_loss(D_out, smooth=False):
    """One sigmoid, then BCELoss: the same value as BCE with logits."""
    labels = torch.ones_like(D_out) * (0.9 if smooth else 1.0)
    return nn.BCELoss()(torch.sigmoid(D_out), labels)


def udacity_style_step(
    D,
    G,
    d_optimizer,
    g_optimizer,
    real_images,
    z_size,
    smooth=False,
    amp_dtype=None,
):
    """New z for G's update, fakes made without gradients for D, autocast
    as a decorator-free context per step.
    """
    device = real_images.device
    real_images = dcgan.scale(real_images)
    d_optimizer.zero_grad()
    with autocast(device, amp_dtype):
        d_real = dcgan.real_loss(D(real_images), smooth)
        with torch.no_grad():
            fake = G(torch.randn(real_images.size(0), z_size))
        d_loss = d_real + dcgan.fake_loss(D(fake))
    d_loss.backward()
    d_optimizer.step()
    g_optimizer.zero_grad()
    with autocast(device, amp_dtype):
        z = torch.randn(real_images.size(0), z_size)
        g_loss = dcgan.real_loss(D(G(z)))
    g_loss.backward()
    g_optimizer.step()
    return d_loss.item(), g_loss.item()


def nullcontext_step(
    D,
    G,
    d_optimizer,
    g_optimizer,
    real_images,
    z_size,
    smooth=False,
    amp_dtype=None,
):
    """D never frozen; autocast only when asked, else a null context; one
    zero_grad per optimizer up front.
    """
    if amp_dtype is None:
        precision = contextlib.nullcontext
    else:
        precision = functools.partial(
            torch.autocast, real_images.device.type, dtype=amp_dtype
        )
    d_optimizer.zero_grad()
    g_optimizer.zero_grad()
    with precision():
        fake = G(torch.randn(len(real_images), z_size))
        d_loss = dcgan.real_loss(
            D(dcgan.scale(real_images)), smooth
        ) + dcgan.fake_loss(D(fake.detach()))
    d_loss.backward()
    d_optimizer.step()
    with precision():
        g_loss = dcgan.real_loss(D(fake))
    g_loss.backward()
    g_optimizer.step()
    return d_loss.item(), g_loss.item()


def course_conv(in_channels, out_channels, batch_norm=True):
    """The course's helper: a strided conv, optionally batch-normalised."""
    layers = [nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=False)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    return nn.Sequential(*layers)


def course_deconv(in_channels, out_channels, batch_norm=True):
    """The course's helper: a transposed conv, optionally batch-normalised."""
    layers = [
        nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    return nn.Sequential(*layers)


class CourseDiscriminator(nn.Module):
    """The course's style: conv layers as attributes, F.leaky_relu and
    view in forward.
    """

    def __init__(self, conv_dim, image_size=32):
        super().__init__()
        self.conv_dim, self.size = conv_dim, image_size // 8
        self.conv1 = course_conv(3, conv_dim, batch_norm=False)
        self.conv2 = course_conv(conv_dim, conv_dim * 2)
        self.conv3 = course_conv(conv_dim * 2, conv_dim * 4)
        self.fc = nn.Linear(conv_dim * 4 * self.size**2, 1)

    def forward(self, x):
        out = F.leaky_relu(self.conv1(x), 0.2)
        out = F.leaky_relu(self.conv2(out), 0.2)
        out = F.leaky_relu(self.conv3(out), 0.2)
        return self.fc(out.view(-1, self.conv_dim * 4 * self.size**2))


class CourseGenerator(nn.Module):
    """The course's style: fc, then transposed convs as attributes, F.relu
    and torch.tanh in forward; with the batch norm and ReLU after fc that
    the exercise asks for (the course's own generator has none:
    generator-projection_without_batch_norm_relu).
    """

    def __init__(self, z_size, conv_dim, image_size=32):
        super().__init__()
        self.conv_dim, self.size = conv_dim, image_size // 8
        self.fc = nn.Linear(z_size, conv_dim * 4 * self.size**2)
        self.bn = nn.BatchNorm2d(conv_dim * 4)
        self.t_conv1 = course_deconv(conv_dim * 4, conv_dim * 2)
        self.t_conv2 = course_deconv(conv_dim * 2, conv_dim)
        self.t_conv3 = course_deconv(conv_dim, 3, batch_norm=False)

    def forward(self, z):
        out = self.fc(z).view(-1, self.conv_dim * 4, self.size, self.size)
        out = F.relu(self.bn(out))
        out = F.relu(self.t_conv1(out))
        out = F.relu(self.t_conv2(out))
        return torch.tanh(self.t_conv3(out))


class FlatProjectionGenerator(dcgan.Generator):
    """Batch norm (nn.BatchNorm1d) and ReLU on the flat projection, before
    it becomes a 4x4 map.
    """

    def __init__(self, z_size, conv_dim, image_size=32):
        super().__init__(z_size, conv_dim, image_size)
        width = self.project.out_features
        self.project = nn.Sequential(
            self.project, nn.BatchNorm1d(width), nn.ReLU()
        )
        self.upsample = self.upsample[2:]  # without BatchNorm2d and ReLU


class SequentialDiscriminator(nn.Sequential):
    """One flat nn.Sequential, as many learners write it."""

    def __init__(self, conv_dim, image_size=32):
        layers = [nn.Conv2d(3, conv_dim, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels, size = conv_dim, image_size // 2
        while size > 4:
            layers += [
                nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels * 2),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels, size = channels * 2, size // 2
        layers += [nn.Flatten(), nn.Linear(channels * 4 * 4, 1)]
        super().__init__(*layers)


class SequentialGenerator(nn.Sequential):
    """One flat nn.Sequential: linear, unflatten, transposed convs."""

    def __init__(self, z_size, conv_dim, image_size=32):
        steps = int(math.log2(image_size)) - 2
        channels = conv_dim * 2 ** (steps - 1)
        layers = [
            nn.Linear(z_size, channels * 4 * 4),
            nn.Unflatten(1, (channels, 4, 4)),
            nn.BatchNorm2d(channels),
            nn.ReLU(True),
        ]
        for _ in range(steps - 1):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(True),
            ]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, 3, 4, 2, 1), nn.Tanh()]
        super().__init__(*layers)


ALTERNATIVES = [
    pytest.param(
        'test_discriminator', AllConvDiscriminator, id='all_conv_discriminator'
    ),
    pytest.param('test_generator', ConvOnlyGenerator, id='conv_only_generator'),
    pytest.param(
        'test_weights_init_normal', classname_init, id='classname_init'
    ),
    pytest.param(
        'test_real_loss', sigmoid_bce_real_loss, id='sigmoid_bce_real_loss'
    ),
    pytest.param(
        'test_train_step', udacity_style_step, id='udacity_style_step'
    ),
    pytest.param('test_train_step', step_with(), id='mutant_baseline_step'),
    pytest.param(
        'test_weights_init_normal', init_with(), id='mutant_baseline_init'
    ),
    pytest.param(
        'test_get_dataloader', loader_mutant(), id='mutant_baseline_loader'
    ),
    pytest.param(
        'test_get_dataloader',
        course_loader(),
        id='course_imagefolder_loader',
    ),
    pytest.param(
        'test_discriminator', CourseDiscriminator, id='course_discriminator'
    ),
    pytest.param('test_generator', CourseGenerator, id='course_generator'),
    pytest.param(
        'test_discriminator',
        SequentialDiscriminator,
        id='sequential_discriminator',
    ),
    pytest.param(
        'test_generator', SequentialGenerator, id='sequential_generator'
    ),
    pytest.param('test_train_step', nullcontext_step, id='nullcontext_step'),
    pytest.param(
        'test_generator',
        last_activation(
            dcgan.Generator,
            lambda: nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh()),
        ),
        id='generator_with_refining_conv',
    ),
    pytest.param(
        'test_generator',
        edited(
            dcgan.Generator,
            lambda net: replace_layers(
                net, nn.ReLU, lambda: nn.Sequential(nn.ReLU(), nn.Dropout(0.2))
            ),
        ),
        id='generator_with_dropout_modules',
    ),
    pytest.param(
        'test_discriminator',
        activations(
            dcgan.Discriminator,
            lambda: nn.Sequential(nn.LeakyReLU(0.2), nn.Dropout(0.3)),
        ),
        id='discriminator_with_dropout',
    ),
    pytest.param(
        'test_discriminator',
        edited(
            dcgan.Discriminator,
            lambda net: rebuild_layers(
                net,
                nn.Conv2d,
                lambda c: nn.Conv2d(
                    c.in_channels, c.out_channels, 4, 2, 1,
                    padding_mode='reflect',
                ),
            ),
        ),
        id='discriminator_reflect_padding',
    ),
    pytest.param(
        'test_generator',
        FlatProjectionGenerator,
        id='generator_batch_norm_1d_projection',
    ),
    pytest.param(
        'test_real_loss', loss_with(real_label), id='mutant_baseline_real_loss'
    ),
    pytest.param(
        'test_optimizers', optimizers_with(), id='mutant_baseline_optimizers'
    ),
]

# ------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------


@pytest.mark.parametrize('name', REFERENCE)
def test_reference_passes(name, capsys):
    run_unit_test(name, REFERENCE[name])
    assert capsys.readouterr().out == 'Tests Passed\n'


@pytest.mark.parametrize('name, implementation', ALTERNATIVES)
def test_correct_alternative_passes(name, implementation, capsys):
    run_unit_test(name, implementation)
    assert capsys.readouterr().out == 'Tests Passed\n'


@pytest.mark.parametrize('name, implementation, match', ALL_MUTANTS)
def test_mutant_is_caught(name, implementation, match, capsys):
    with pytest.raises(AssertionError, match=re.escape(match)) as caught:
        run_unit_test(name, implementation)
    assert 'Hint: ' in str(caught.value)
    assert 'Tests Passed' not in capsys.readouterr().out


@pytest.mark.parametrize('implementation, hint', CLASSIC_MISTAKES)
def test_classic_mistake_has_its_own_hint(implementation, hint, capsys):
    with pytest.raises(AssertionError) as caught:
        run_unit_test('test_train_step', implementation)
    message = str(caught.value)
    assert f'Hint: {hint}' in message
    others = {pu._NOT_DETACHED, pu._NO_GRAD_FAKES, pu._STALE_D} - {hint}
    assert not any(other in message for other in others)
    assert 'use the arguments passed in' not in message
    assert 'Tests Passed' not in capsys.readouterr().out


def test_classic_mistake_hints_name_the_mistake_and_the_fix():
    hints = [pu._NOT_DETACHED, pu._NO_GRAD_FAKES, pu._STALE_D]
    assert len(set(hints)) == 3
    for hint, mistake in zip(hints, ('detach', 'no_grad', 'before')):
        assert hint.startswith('a classic GAN mistake: ')
        assert mistake in hint.split('Fix: ')[0] and 'Fix: ' in hint


@pytest.mark.parametrize('n', [10, 40, 57, 400, 32_600])
def test_held_out_rule_matches_the_project(n):
    """problem_unittests re-implements the held-out split; it must agree
    with helpers.split_files, which load_faces(split='train') uses.
    """
    names = sorted(f'celeba/{i:06d}.jpg' for i in range(n))
    held_out = set(helpers.split_files(names, 'held_out'))
    assert pu._held_out(names) == held_out
    assert len(held_out) == min(helpers.HELD_OUT_SIZE, n // 10)
    assert [n for n in names if n not in held_out] == helpers.split_files(
        names, 'train'
    )


def test_written_faces_split_like_load_faces(tmp_path):
    """The flat-coloured faces of the split check: load_faces' training
    split is what the check expects, and the course predicate agrees.
    """
    data_dir, names = pu._write_flat_faces(tmp_path / 'faces')
    held_out = pu._held_out(names)
    assert len(held_out) == 4
    train = [name for name in names if name not in held_out]
    images = helpers.load_faces(
        data_dir, 16, split='train', cache_dir=tmp_path / 'cache'
    )
    colours = torch.tensor([pu._palette(names.index(n)) for n in train])
    assert (images.float().mean((2, 3)) - colours).abs().max() <= 2
    keep = is_training_file(data_dir)
    assert [n for n in names if keep(os.path.join(data_dir, n))] == train


def needs_the_helper():
    if not hasattr(helpers, 'is_training_file'):
        pytest.skip('helpers.is_training_file is not there (yet)')


def test_inline_predicate_matches_the_helper(tmp_path):
    """The predicate written out above is what helpers.is_training_file
    gives, on the faces of the split check and beside a hidden file.
    """
    needs_the_helper()
    data_dir, names = pu._write_flat_faces(tmp_path / 'faces')
    (data_dir / 'celeba' / '.hidden.jpg').write_bytes(b'')
    (data_dir / 'celeba' / 'notes.txt').write_text('not an image')
    ours = is_training_file(data_dir)
    theirs = helpers.is_training_file(data_dir)
    paths = [os.path.join(data_dir, name) for name in names]
    paths += [
        os.path.join(data_dir, 'celeba', name)
        for name in ('.hidden.jpg', 'notes.txt')
    ]
    assert [ours(p) for p in paths] == [theirs(p) for p in paths]


def test_course_loader_with_the_helper_passes(capsys):
    """What the split check's hint recommends passes it."""
    needs_the_helper()
    run_unit_test(
        'test_get_dataloader',
        course_loader(predicate=helpers.is_training_file),
    )
    assert capsys.readouterr().out == 'Tests Passed\n'


def test_every_unit_test_has_mutants():
    covered = {param.values[0] for param in ALL_MUTANTS}
    assert covered == set(REFERENCE)
    assert {n for n in dir(pu) if n.startswith('test_')} == set(REFERENCE)


@pytest.mark.parametrize('name', REFERENCE)
def test_global_random_state_is_left_alone(name, capsys):
    first_mutant = next(p.values[1] for p in ALL_MUTANTS if p.values[0] == name)
    before = torch.get_rng_state()
    run_unit_test(name, REFERENCE[name])
    assert torch.equal(torch.get_rng_state(), before)
    with pytest.raises(AssertionError):  # also when a check fails
        run_unit_test(name, first_mutant)
    assert torch.equal(torch.get_rng_state(), before)


def test_imports_only_torch_pillow_and_the_standard_library():
    tree = ast.parse(Path(pu.__file__).read_text())
    imported = {
        alias.name.split('.')[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module.split('.')[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert imported <= {
        'collections',
        'contextlib',
        'copy',
        'dis',
        'functools',
        'hashlib',
        'io',
        'math',
        'pathlib',
        'sys',
        'tempfile',
        'torch',
        'numpy',
        'PIL',
    }


def test_lines_fit_in_100_characters():
    long_lines = [
        number
        for number, line in enumerate(
            Path(pu.__file__).read_text().splitlines(), start=1
        )
        if len(line) > 100
    ]
    assert not long_lines


def test_whole_module_is_fast(capsys):
    start = time.perf_counter()
    for name, implementation in REFERENCE.items():
        run_unit_test(name, implementation)
    assert time.perf_counter() - start < 10
