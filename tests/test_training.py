"""train(): checkpoints every epoch, exact resume, clear stops on interrupt
and divergence."""

import math

import pytest
import torch
from torch.utils.data import DataLoader

import dcgan
import helpers
from facegen.run import ema_update, plain_batch_norm

CONFIG = dict(
    batch_size=8,
    image_size=8,
    z_size=4,
    conv_dim=4,
    lr=2e-3,
    beta1=0.5,
    beta2=0.999,
    smooth=True,
    lr_decay=False,
    n_epochs=3,
    n_images=None,
    sample_size=4,
    n_score=8,
    seed=0,
    precision='fp32',
    print_every=1,
    quick=True,
)
DECAY = {**CONFIG, 'lr_decay': True}
EMA = {**DECAY, 'ema_decay': 0.9}


def make_run(seed, config=CONFIG, n_images=32):
    """Seeded networks, optimizers, loader and fixed noise, built as the
    notebook does."""
    torch.manual_seed(seed)
    size = config['image_size']
    faces = torch.randint(
        0,
        256,
        (n_images, 3, size, size),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(123),
    )
    loader = DataLoader(
        dcgan.FaceDataset(faces),
        batch_size=config['batch_size'],
        shuffle=True,
        drop_last=True,
    )
    D, G = dcgan.build_networks(
        config['z_size'], config['conv_dim'], size, 'cpu'
    )
    d_opt, g_opt = dcgan.build_optimizers(
        D, G, config['lr'], (config['beta1'], config['beta2'])
    )
    fixed_z = torch.randn(config['sample_size'], config['z_size'])
    return D, G, d_opt, g_opt, loader, fixed_z


def train(run_dir, seed=0, config=CONFIG, score=None, **kwargs):
    D, G, d_opt, g_opt, loader, fixed_z = make_run(seed, config, **kwargs)
    losses, samples, scores, kept = dcgan.train(
        D, G, d_opt, g_opt, loader, fixed_z, config, run_dir, score=score
    )
    assert len(scores) == (len(samples) if score is not None else 0)
    return losses, samples, G, kept


def mean_weight(G):
    """A stand-in score that follows training: the mean of G's output layer
    weights."""
    return G.upsample[-2].weight.mean().item()


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    full_losses, full_samples, full_G, _ = train(tmp_path / 'a')

    train(tmp_path / 'b', config={**CONFIG, 'n_epochs': 2})
    # A new process would rebuild everything from other random numbers:
    # resuming must not care.
    losses, samples, G, _ = train(tmp_path / 'b', seed=99)

    assert losses == full_losses
    assert len(samples) == len(full_samples) == 3
    assert all(torch.equal(a, b) for a, b in zip(samples, full_samples))
    for name, value in full_G.state_dict().items():
        assert torch.equal(G.state_dict()[name], value), name


def interrupt_in_epoch(epoch, monkeypatch, batches=4):
    """Make train_step raise KeyboardInterrupt on the first batch of `epoch`."""
    real_step, calls = dcgan.train_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == (epoch - 1) * batches + 1:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(dcgan, 'train_step', step)
    return real_step


def test_learning_rates_fall_linearly_to_zero(tmp_path):
    D, G, d_opt, g_opt, loader, fixed_z = make_run(0, DECAY)
    dcgan.train(
        D, G, d_opt, g_opt, loader, fixed_z, {**DECAY, 'n_epochs': 3}, tmp_path
    )
    assert d_opt.param_groups[0]['lr'] == g_opt.param_groups[0]['lr'] == 0.0
    state = helpers.load_checkpoint(tmp_path / 'checkpoint.pt')
    assert state['lr_D']['last_epoch'] == 3 * 4  # one step per batch

    D, G, d_opt, g_opt, loader, fixed_z = make_run(0, CONFIG)
    dcgan.train(D, G, d_opt, g_opt, loader, fixed_z, CONFIG, tmp_path / 'flat')
    assert g_opt.param_groups[0]['lr'] == CONFIG['lr'], (
        'lr_decay=False keeps lr'
    )


def assert_same_weights(a, b):
    for name, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[name], value), name


def test_the_weight_average_does_not_change_training(tmp_path):
    losses, _, G, _ = train(tmp_path / 'plain', config=DECAY)
    ema_losses, _, ema_G, kept = train(tmp_path / 'ema', config=EMA)
    assert ema_losses == losses
    assert_same_weights(G, ema_G)
    weight = kept.upsample[-2].weight  # the kept generator is the average
    assert not torch.equal(weight, ema_G.upsample[-2].weight)


def test_kept_generator_is_the_average_with_fresh_batch_norm(tmp_path):
    D, G, d_opt, g_opt, loader, fixed_z = make_run(0, EMA)
    run = helpers.TrainingRun(tmp_path, EMA, D, G, d_opt, g_opt, loader,
                              fixed_z)
    for _ in range(3):
        G.upsample[-2].weight.data += 1.0
        run.average.update_parameters(G)  # as run.after_step does
    before = {name: value.clone() for name, value in G.state_dict().items()}
    kept = run.kept_generator()
    # The first update copies G; the next two keep min(0.9, (1 + n) / (10 + n))
    # of the average: 2/11, then 3/12. So the average lags G's last weight
    # (it rose by 1 per step) by 3/12 * (1 + 2/11).
    lag = 3 / 12 * (1 + 2 / 11)
    expected = G.upsample[-2].weight - lag
    assert torch.allclose(kept.upsample[-2].weight, expected, atol=1e-6)
    assert not kept.training
    for name, value in G.state_dict().items():  # G is left as it was
        assert torch.equal(before[name], value), name
    bn = kept.upsample[0]  # statistics measured, not G's initial ones
    assert not torch.equal(bn.running_mean, G.upsample[0].running_mean)


def test_the_average_never_reads_its_count_on_the_host():
    # On a GPU, reading the update count each step would stall the step; on
    # the meta device (no values at all) any such read raises.
    averages = [torch.zeros(3, 2, device='meta')]
    weights = [torch.ones(3, 2, device='meta')]
    ema_update(0.999)(averages, weights, torch.tensor(2, device='meta'))
    on_cpu = [torch.zeros(3, 2)]
    ema_update(0.999)(on_cpu, [torch.ones(3, 2)], torch.tensor(2))
    assert torch.allclose(on_cpu[0], torch.full((3, 2), 1 - 3 / 12))


def test_the_generator_returned_is_the_one_scored_last(tmp_path):
    scored = []

    def score(G):
        scored.append(G)
        return 0.0

    _, _, _, kept = train(tmp_path, config=EMA, score=score)
    assert kept is scored[-1]  # not a second batch-norm estimate
    assert len({id(G) for G in scored}) == 3  # a fresh one every epoch


def test_kept_generator_without_average_is_a_copy_of_G(tmp_path):
    D, G, d_opt, g_opt, loader, fixed_z = make_run(0, DECAY)
    run = helpers.TrainingRun(tmp_path, DECAY, D, G, d_opt, g_opt, loader,
                              fixed_z)
    kept = run.kept_generator()
    assert kept is not G and run.average is None
    assert torch.equal(kept.upsample[-2].weight, G.upsample[-2].weight)


@pytest.mark.parametrize('config', [DECAY, EMA], ids=['decay', 'average'])
def test_run_resumes_exactly_after_an_interrupt(config, tmp_path,
                                                monkeypatch):
    full_losses, full_samples, full_G, full_kept = train(tmp_path / 'a',
                                                         config=config)
    real_step = interrupt_in_epoch(3, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / 'b', config=config)
    monkeypatch.setattr(dcgan, 'train_step', real_step)
    losses, samples, G, kept = train(tmp_path / 'b', seed=99, config=config)
    assert losses == full_losses
    assert all(torch.equal(a, b) for a, b in zip(samples, full_samples))
    assert_same_weights(full_G, G)
    assert_same_weights(full_kept, kept)
    state = helpers.load_checkpoint(tmp_path / 'b' / 'checkpoint.pt')
    averaged = state.get('G_average', {}).get('n_averaged')
    assert averaged == (3 * 4 if config.get('ema_decay') else None)


def test_sync_batch_norm_is_made_plain_for_the_kept_generator():
    G = dcgan.Generator(4, 4, 8)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(G)
    synced.upsample[0].running_mean += 2.0
    plain = plain_batch_norm(synced)
    layers = list(plain.modules())
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in layers)
    assert (plain.upsample[0].running_mean == 2.0).all()  # statistics kept
    plain.train()(torch.randn(2, 4))  # runs in one process, on a CPU


def test_decaying_run_refuses_another_length(tmp_path):
    train(tmp_path, config={**DECAY, 'n_epochs': 1})
    with pytest.raises(ValueError, match=r'n_epochs 1 there, 3 here'):
        train(tmp_path, config=DECAY)


def test_checkpoint_holds_the_whole_state_and_loads_safely(tmp_path):
    train(tmp_path)
    # weights_only=True
    state = helpers.load_checkpoint(tmp_path / 'checkpoint.pt')
    assert {
        'config',
        'epoch',
        'D',
        'G',
        'opt_D',
        'opt_G',
        'losses',
        'fixed_z',
        'rng',
        'samples',
        'scores',
    } <= set(state)
    assert state['epoch'] == 3 and state['config'] == CONFIG
    assert state['samples'].shape == (3, 4, 3, 8, 8)
    assert len(state['losses']['D']) == 3 * 4  # 3 epochs of 4 batches
    assert sorted(p.name for p in (tmp_path / 'samples').iterdir()) == [
        'epoch_001.png',
        'epoch_002.png',
        'epoch_003.png',
    ]


def test_scores_are_kept_per_epoch_and_resumed(tmp_path, capsys):
    scores = []

    def score(G):
        scores.append(mean_weight(G))
        return scores[-1]

    train(tmp_path / 'a', score=score)
    full = list(scores)
    assert len(full) == 3 and len(set(full)) == 3
    assert (
        helpers.load_checkpoint(tmp_path / 'a' / 'checkpoint.pt')['scores']
        == full
    )
    assert f'score {full[-1]:.1f}' in capsys.readouterr().out

    scores.clear()
    train(tmp_path / 'b', config={**CONFIG, 'n_epochs': 2}, score=score)
    D, G, d_opt, g_opt, loader, fixed_z = make_run(99)
    _, _, resumed, _ = dcgan.train(
        D, G, d_opt, g_opt, loader, fixed_z, CONFIG, tmp_path / 'b', score=score
    )
    assert resumed == full


def test_finished_run_is_loaded_not_trained_again(tmp_path, monkeypatch):
    losses, samples, *_ = train(tmp_path)
    monkeypatch.setattr(
        dcgan, 'train_step', lambda *a, **k: pytest.fail('trained again')
    )
    again, samples_again, *_ = train(tmp_path, seed=5)
    assert again == losses and len(samples_again) == 3


def test_interrupt_keeps_the_last_checkpoint_and_says_so(
    tmp_path, monkeypatch, capsys
):
    real_step, calls = dcgan.train_step, []

    def interrupted_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # epoch 2, batch 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(dcgan, 'train_step', interrupted_in_epoch_2)
    # The interrupt goes on up, so that Jupyter's "Run All" stops at the
    # training cell instead of running the cells below on a half-trained
    # generator.
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path)
    out = capsys.readouterr().out
    assert 'Interrupted in epoch 2' in out and 'holds epoch 1' in out
    state = helpers.load_checkpoint(tmp_path / 'checkpoint.pt')
    # finished epochs only
    assert state['epoch'] == 1 and len(state['losses']['D']) == 4

    monkeypatch.setattr(dcgan, 'train_step', real_step)
    losses, samples, *_ = train(tmp_path)
    assert len(losses['D']) == 12 and len(samples) == 3


def test_non_finite_loss_stops_and_names_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    real_step, calls = dcgan.train_step, []

    def diverges_in_epoch_2(*args, **kwargs):
        calls.append(1)
        d_loss, g_loss = real_step(*args, **kwargs)
        return (math.nan if len(calls) == 7 else d_loss), g_loss

    monkeypatch.setattr(dcgan, 'train_step', diverges_in_epoch_2)
    with pytest.raises(
        FloatingPointError, match=r'epoch 2/3, batch 3.*holds epoch 1'
    ):
        train(tmp_path)
    assert helpers.load_checkpoint(tmp_path / 'checkpoint.pt')['epoch'] == 1


def test_other_settings_are_not_resumed(tmp_path):
    train(tmp_path, config={**CONFIG, 'n_epochs': 1})
    with pytest.raises(ValueError, match=r"lr 0\.002 there, 0\.01 here"):
        train(tmp_path, config={**CONFIG, 'lr': 0.01})


def test_batch_larger_than_the_data_is_refused_before_training(tmp_path):
    with pytest.raises(
        ValueError, match=r'batch_size=64 is larger than the 32 training'
    ):
        train(tmp_path, config={**CONFIG, 'batch_size': 64})
    assert not (tmp_path / 'checkpoint.pt').exists()


@pytest.mark.parametrize(
    'name, value',
    [
        ('batch_size', 0),
        ('z_size', 0),
        ('conv_dim', -1),
        ('n_epochs', 2.5),
        ('sample_size', '16'),
        ('n_score', 0),
        ('print_every', 0),
        ('n_images', 0),
        ('lr', 0),
        ('lr', 2),
        ('beta1', 1.0),
        ('beta2', -0.1),
        ('smooth', 1),
        ('lr_decay', 'yes'),
        ('ema_decay', 0),
        ('ema_decay', 1.0),
        ('ema_decay', True),
        ('ema_decay', '0.999'),
    ],
)
def test_impossible_settings_are_named(name, value):
    helpers.check_config(CONFIG)  # the good settings pass
    with pytest.raises(ValueError, match=name):
        helpers.check_config({**CONFIG, name: value})


@pytest.mark.parametrize('image_size', [0, 4, 48, 100])
@pytest.mark.parametrize(
    'build',
    [lambda s: dcgan.Discriminator(8, s), lambda s: dcgan.Generator(4, 8, s)],
    ids=['D', 'G'],
)
def test_image_sizes_the_networks_cannot_make_are_named(build, image_size):
    with pytest.raises(
        ValueError,
        match=rf'image_size must be a power of two.*got {image_size}',
    ):
        build(image_size)


class RecordingBar:
    """A stand-in for tqdm that records the batches at which the losses were
    shown."""

    shown = []

    def __init__(self, iterable, **kwargs):
        self.iterable, self.count = iterable, 0

    def __iter__(self):
        for item in self.iterable:
            self.count += 1
            yield item

    def set_postfix(self, **losses):
        RecordingBar.shown.append(self.count)


@pytest.mark.parametrize(
    'print_every, shown', [(1, [1, 2, 3, 4]), (2, [1, 3]), (50, [1])]
)
def test_progress_bar_shows_the_losses_every_print_every_batches(
    print_every, shown, tmp_path, monkeypatch
):
    monkeypatch.setattr(dcgan, 'tqdm', RecordingBar)
    monkeypatch.setattr(helpers, 'live_progress', lambda: True)
    RecordingBar.shown = []
    train(
        tmp_path, config={**CONFIG, 'n_epochs': 1, 'print_every': print_every}
    )
    assert RecordingBar.shown == shown  # 4 batches, starting with the first


def test_without_a_live_bar_the_losses_are_printed_as_lines(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(dcgan, 'tqdm', RecordingBar)
    monkeypatch.setattr(helpers, 'live_progress', lambda: False)
    RecordingBar.shown = []
    train(tmp_path, config={**CONFIG, 'n_epochs': 1, 'print_every': 2})
    lines = [line for line in capsys.readouterr().out.splitlines()
             if ', batch ' in line]
    assert RecordingBar.shown == []
    assert [line.split(':')[0] for line in lines] == [
        'epoch 1/1, batch 1/4', 'epoch 1/1, batch 3/4']
    assert 'D loss' in lines[0] and 'G loss' in lines[0]
