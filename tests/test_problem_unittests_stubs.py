"""An exercise that is not written yet gets a short, clear message.

The learner's notebook starts with stubs whose bodies raise
NotImplementedError('<name> is not written yet'). Whatever check meets one
must fail with an AssertionError that starts 'not written yet: ', names the
exercise and the function, says 'write it in the cell above, then run this
check again', and carries no traceback from inside the check. Each check
below gets stubs of the kinds a learner meets: a whole function or class,
one method, nn.Module's missing forward(), and a Dataset method run in a
DataLoader worker process. An error torch raises itself stays an ordinary
failure.
"""

import re

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import dcgan
import helpers
import problem_unittests as pu

ADVICE = 'write it in the cell above, then run this check again'


def not_written(name):
    """The error a stub raises."""
    return NotImplementedError(f'{name} is not written yet')


def stub(name):
    """A function called name whose body is not written yet."""

    def function(*args, **kwargs):
        raise not_written(name)

    code = function.__code__
    names = {'co_name': name}
    if hasattr(code, 'co_qualname'):  # Python 3.11+
        names['co_qualname'] = name
    function.__code__ = code.replace(**names)
    return function


def face_dataset(missing):
    """The dataset exercise with one method ('__len__' or '__getitem__')
    not written yet.
    """

    class FaceDataset(Dataset):
        def __init__(self, images):
            self.images = images

        def __len__(self):
            if missing == '__len__':  # DataLoader's shuffling asks for it
                raise not_written('FaceDataset.__len__')
            return len(self.images)

        def __getitem__(self, index):
            if missing == '__getitem__':
                raise not_written('FaceDataset.__getitem__')
            return self.images[index].float() / 255, 0

    return FaceDataset


def loader_over(dataset_class, **settings):
    """The reference get_dataloader over dataset_class."""

    def get_dataloader(batch_size, image_size, data_dir, n_images=None):
        images = helpers.load_faces(data_dir, image_size, n_images,
                                    split='train')
        return DataLoader(
            dataset_class(images), batch_size, shuffle=True, **settings
        )

    return get_dataloader


def discriminator_stub(part):
    """The reference Discriminator with part ('__init__' or 'forward') not
    written yet, or with no forward at all ('no forward': nn.Module's own,
    which raises NotImplementedError). The rest is written, so the check
    gets as far as the stub.
    """

    class Discriminator(dcgan.Discriminator):
        def __init__(self, conv_dim, image_size=32):
            if part == '__init__':
                nn.Module.__init__(self)
                raise not_written('Discriminator.__init__')
            super().__init__(conv_dim, image_size)

        if part == 'no forward':
            forward = nn.Module.forward
        else:

            def forward(self, x):
                if part == 'forward':
                    raise not_written('Discriminator.forward')
                return super().forward(x)

    return Discriminator


def generator_stub(part):
    """The reference Generator with part not written yet, as above."""

    class Generator(dcgan.Generator):
        def __init__(self, z_size, conv_dim, image_size=32):
            if part == '__init__':
                nn.Module.__init__(self)
                raise not_written('Generator.__init__')
            super().__init__(z_size, conv_dim, image_size)

        if part == 'no forward':
            forward = nn.Module.forward
        else:

            def forward(self, z):
                if part == 'forward':
                    raise not_written('Generator.forward')
                return super().forward(z)

    return Generator


# (check, stub, what the message must name besides the exercise, stub text)
STUBS = [
    pytest.param(
        'test_get_dataloader',
        stub('get_dataloader'),
        'get_dataloader',
        'get_dataloader is not written yet',
        id='get_dataloader',
    ),
    pytest.param(
        'test_get_dataloader',
        loader_over(face_dataset('__getitem__')),
        'FaceDataset.__getitem__ raised',
        'FaceDataset.__getitem__ is not written yet',
        id='get_dataloader-FaceDataset.__getitem__',
    ),
    pytest.param(
        'test_get_dataloader',
        loader_over(face_dataset('__getitem__'), num_workers=1),
        'get_dataloader',
        'FaceDataset.__getitem__ is not written yet',
        id='get_dataloader-FaceDataset.__getitem__-in_a_worker',
    ),
    pytest.param(
        'test_get_dataloader',
        loader_over(face_dataset('__len__')),
        'FaceDataset.__len__ raised',
        'FaceDataset.__len__ is not written yet',
        id='get_dataloader-FaceDataset.__len__',
    ),
    pytest.param(
        'test_scale',
        stub('scale'),
        'scale',
        'scale is not written yet',
        id='scale',
    ),
    pytest.param(
        'test_discriminator',
        discriminator_stub('__init__'),
        'Discriminator.__init__ raised',
        'Discriminator.__init__ is not written yet',
        id='Discriminator.__init__',
    ),
    pytest.param(
        'test_discriminator',
        discriminator_stub('forward'),
        'Discriminator.forward raised',
        'Discriminator.forward is not written yet',
        id='Discriminator.forward',
    ),
    pytest.param(
        'test_discriminator',
        discriminator_stub('no forward'),
        'Discriminator',
        'missing the required "forward" function',
        id='Discriminator-no_forward',
    ),
    pytest.param(
        'test_generator',
        generator_stub('__init__'),
        'Generator.__init__ raised',
        'Generator.__init__ is not written yet',
        id='Generator.__init__',
    ),
    pytest.param(
        'test_generator',
        generator_stub('forward'),
        'Generator.forward raised',
        'Generator.forward is not written yet',
        id='Generator.forward',
    ),
    pytest.param(
        'test_generator',
        generator_stub('no forward'),
        'Generator',
        'missing the required "forward" function',
        id='Generator-no_forward',
    ),
    pytest.param(
        'test_weights_init_normal',
        stub('weights_init_normal'),
        'weights_init_normal',
        'weights_init_normal is not written yet',
        id='weights_init_normal',
    ),
    pytest.param(
        'test_real_loss',
        stub('real_loss'),
        'real_loss',
        'real_loss is not written yet',
        id='real_loss',
    ),
    pytest.param(
        'test_fake_loss',
        stub('fake_loss'),
        'fake_loss',
        'fake_loss is not written yet',
        id='fake_loss',
    ),
    pytest.param(
        'test_optimizers',
        stub('build_optimizers'),
        'build_optimizers',
        'build_optimizers is not written yet',
        id='build_optimizers',
    ),
    pytest.param(
        'test_train_step',
        stub('train_step'),
        'train_step',
        'train_step is not written yet',
        id='train_step',
    ),
]

# the parameter of each check: what the learner wrote
EXERCISES = {
    'test_get_dataloader': 'get_dataloader',
    'test_scale': 'scale',
    'test_discriminator': 'Discriminator',
    'test_generator': 'Generator',
    'test_weights_init_normal': 'weights_init_normal',
    'test_real_loss': 'real_loss',
    'test_fake_loss': 'fake_loss',
    'test_optimizers': 'build_optimizers',
    'test_train_step': 'train_step',
}


@pytest.mark.parametrize('name, implementation, where, text', STUBS)
def test_stub_is_reported_as_not_written(
    name, implementation, where, text, capsys
):
    with pytest.raises(AssertionError) as caught:
        getattr(pu, name)(implementation)
    message = str(caught.value)
    assert message.startswith(f'not written yet: {EXERCISES[name]} (')
    assert where in message and text in message
    if where == EXERCISES[name]:  # the exercise itself is the stub
        assert f'({EXERCISES[name]} raised' not in message
    assert message.endswith(f'Hint: {ADVICE}.')
    assert '\n' not in message and 'Traceback' not in message
    # raise ... from None: no traceback from deep inside the check
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert 'Tests Passed' not in capsys.readouterr().out


def test_every_check_has_a_stub():
    assert {param.values[0] for param in STUBS} == set(EXERCISES)
    assert {n for n in dir(pu) if n.startswith('test_')} == set(EXERCISES)


def test_torch_errors_are_not_called_unwritten(capsys):
    """A NotImplementedError from inside torch (here: reading a meta
    tensor) is the learner's bug, reported like any other error.
    """

    def scale(x, feature_range=(-1, 1)):
        return x + torch.zeros(x.shape, device='meta').cpu()

    with pytest.raises(AssertionError) as caught:
        pu.test_scale(scale)
    message = str(caught.value)
    assert not message.startswith('not written yet')
    assert re.match(r'scale\(x\) raised NotImplementedError: ', message)
    assert 'Hint: ' in message


def test_reference_still_passes(capsys):
    pu.test_train_step(dcgan.train_step)
    assert capsys.readouterr().out == 'Tests Passed\n'
