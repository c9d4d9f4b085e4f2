"""The training run around the learner's loop: checkpoints after every
epoch, exact resume, the learning-rate schedule, the average of the
generator's weights, and clear messages when a run is interrupted or
diverges; plus the published generator file.
"""
import time
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn, optim
from torch.optim.swa_utils import AveragedModel

from .faces import held_out_fingerprint
from .files import CheckpointError, load_checkpoint, save_checkpoint
from .plots import save_image_grid
from .sampling import generate, recalibrate_batch_norm

# Settings that may change between a run and its resumption without
# changing what is trained.
_RESUMABLE_CHANGES = {'n_epochs', 'print_every'}
GENERATOR_KEYS = ('state_dict', 'config', 'score')
# What the messages tell the user to do, in the words of what drives the
# run: the notebook's training cell, or a script such as train.py.
NOTEBOOK_HINTS = {
    'go_on': 'Run this cell again to go on from there.',
    'other_dir': 'set run_dir to another folder',
    'retry': 'Start a new run (another run_dir) with a lower lr or another '
             'seed.',
}


def linear_decay(optimizer, total_steps):
    """A scheduler that lowers optimizer's learning rate linearly, one step
    per batch, to 0 after total_steps batches."""
    return optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0,
                                       end_factor=0.0, total_iters=total_steps)


# The average's decay after n updates is min(ema_decay, (1 + n) / (10 + n)):
# it remembers only the last few steps at first, when the weights still
# change fast, and reaches ema_decay after about 9 / (1 - ema_decay) steps.
EMA_WARMUP = 10


def ema_update(decay):
    """AveragedModel's multi_avg_fn for an exponential moving average of the
    weights with a warming-up decay (EMA_WARMUP)."""
    def update(averages, weights, n):  # parameters only: floats
        # n, the updates before this one, is a () tensor on the weights'
        # device; it stays one: reading it here would make a GPU wait.
        keep = ((1 + n) / (EMA_WARMUP + n)).clamp(max=decay)  # () tensor
        torch._foreach_lerp_(averages, weights, [1 - keep] * len(averages))
    return update


def weight_average(G, decay):
    """An exponential moving average of G's weights (ema_update), updated by
    average.update_parameters(G) after every step; None when decay is None.
    Its batch-norm statistics are not averaged: kept_generator re-estimates
    them."""
    if decay is None:
        return None
    return AveragedModel(G, multi_avg_fn=ema_update(decay))


def after_every_step(schedulers, G, average):
    """What runs after every training step, in order: each learning-rate
    scheduler's step, then the update of the weight average from G (when
    there is one)."""
    steps = [scheduler.step for scheduler in schedulers]
    if average is not None:
        steps.append(lambda: average.update_parameters(G))
    return steps


def plain_batch_norm(net):
    """net, with every SyncBatchNorm (train.py --sync-bn) replaced in place
    by a BatchNorm2d holding its weights and statistics, so that it runs in
    one process."""
    for name, child in net.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            plain = nn.BatchNorm2d(child.num_features, child.eps,
                                   child.momentum, child.affine,
                                   child.track_running_stats)
            plain.load_state_dict(child.state_dict())
            setattr(net, name, plain.to(child.running_mean.device))
        else:
            plain_batch_norm(child)
    return net


def kept_generator(G, average, z_size):
    """The generator whose faces count: a copy of the weight average (of G
    itself when average is None), in eval mode, with its batch-norm
    statistics re-estimated for its weights (recalibrate_batch_norm). G and
    the average stay as they are."""
    kept = plain_batch_norm(deepcopy(G if average is None
                                     else average.module))
    return recalibrate_batch_norm(kept, z_size).eval()


def training_state(config, epoch, nets, optimizers, losses, fixed_z, samples,
                   scores, seconds=()):
    """The checkpoint for the end of an epoch: weights, the states of the
    optimizers (and of any schedulers among them), losses, the fixed noise,
    its samples, the scores and training seconds of the epochs so far and
    the random-number state, as tensors and plain values."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        'config': dict(config), 'epoch': epoch,
        **{name: net.state_dict() for name, net in nets.items()},
        **{name: optimizer.state_dict()
           for name, optimizer in optimizers.items()},
        'losses': {name: list(values) for name, values in losses.items()},
        'fixed_z': fixed_z.detach().cpu(),
        'samples': torch.stack(samples),  # (epochs, N, 3, S, S) in [-1, 1]
        'scores': [float(score) for score in scores],  # one per epoch, or []
        'seconds': [float(second) for second in seconds],  # one per epoch
        'rng': {'torch': torch.get_rng_state(), 'cuda': cuda},
    }


def _check_same_recipe(saved, config, path, other_dir=None):
    """Refuse to resume a run whose settings differ in anything but its
    length (and in its length too when the learning rates fall to 0 over
    it: that changes the schedule). other_dir: how to name another run
    folder in the message."""
    free = _RESUMABLE_CHANGES - ({'n_epochs'} if config.get('lr_decay')
                                 else set())
    changed = sorted(key for key in set(saved) | set(config)
                     if key not in free and saved.get(key) != config.get(key))
    if changed:
        diffs = ', '.join(f'{key} {saved.get(key)!r} there, '
                          f'{config.get(key)!r} here' for key in changed)
        raise ValueError(
            f'{path} was saved by a run with other settings ({diffs}). '
            f'Delete {Path(path).parent} to start a new run, or '
            f'{other_dir or NOTEBOOK_HINTS["other_dir"]}.')


def resume_training(path, config, nets, optimizers, other_dir=None):
    """Load the checkpoint at path, if there is one, into nets and
    optimizers and restore the random-number state, so training goes on
    exactly where it stopped. Returns the checkpoint dict, or None.
    other_dir: how the refusal of other settings names another folder."""
    path = Path(path)
    if not path.exists():
        return None
    state = load_checkpoint(path)
    _check_same_recipe(state['config'], config, path, other_dir)
    for name, module in {**nets, **optimizers}.items():
        module.load_state_dict(state[name])
    torch.set_rng_state(state['rng']['torch'])
    if state['rng']['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['rng']['cuda'])
    print(f'Resuming from {path}: {state["epoch"]} of {config["n_epochs"]} '
          f'epochs done.')
    return state


class TrainingRun:
    """What a training loop needs besides the training: the checkpoint in
    run_dir (resumed when there is one), what runs after every step (the
    learning-rate schedules and the weight average, run.after_step), the
    losses, fixed-noise samples and scores of every epoch so far, and the
    generator to keep.

        run = TrainingRun(run_dir, config, D, G, d_opt, g_opt, loader, z)
        for epoch in run.epochs_left():
            with run.epoch(epoch):       # explains an interrupt or a NaN
                d_losses, g_losses = ...  # one pass over loader, calling
                                          # each of run.after_step per step
            run.end_epoch(epoch, d_losses, g_losses, score)
        G_kept = run.kept_generator()

    config['ema_decay']: the decay of the average of G's weights that is
    kept, scored and shown (None: G itself, as trained).

    hints: the sentences that say what to do after an interrupt, a
    divergence or a refusal (NOTEBOOK_HINTS's keys); the notebook's words by
    default, a script passes its own.
    """

    def __init__(self, run_dir, config, D, G, d_optimizer, g_optimizer,
                 loader, fixed_z, hints=None):
        if len(loader) == 0:
            raise ValueError(
                f'batch_size={loader.batch_size} is larger than the '
                f'{len(loader.dataset)} training images, so an epoch has no '
                f'full batch. Lower batch_size or train on more images.')
        self.config, self.G = config, G
        self.hints = {**NOTEBOOK_HINTS, **(hints or {})}
        self.run_dir = Path(run_dir)
        self.checkpoint = self.run_dir / 'checkpoint.pt'
        self.nets = {'D': D, 'G': G}
        optimizers = {'opt_D': d_optimizer, 'opt_G': g_optimizer}
        schedulers = {}
        if config['lr_decay']:  # lr reaches 0 after the last batch
            total = config['n_epochs'] * len(loader)
            schedulers = {'lr_D': linear_decay(d_optimizer, total),
                          'lr_G': linear_decay(g_optimizer, total)}
        self.average = weight_average(G, config.get('ema_decay'))
        if self.average is not None:
            self.nets['G_average'] = self.average
        self.after_step = after_every_step(schedulers.values(), G,
                                           self.average)
        self.stateful = {**optimizers, **schedulers}  # saved with weights
        self.losses, self.samples, self.scores = {'D': [], 'G': []}, [], []
        self.seconds = []  # training time of each epoch, scoring left out
        self.done, self.fixed_z = 0, fixed_z
        self._kept = None  # the kept generator, while no step has changed G
        state = resume_training(self.checkpoint, config, self.nets,
                                self.stateful, self.hints['other_dir'])
        if state is not None:  # the fixed noise stays the same across runs
            self.losses, self.scores = state['losses'], state['scores']
            self.samples = list(state['samples'])
            self.seconds = state.get('seconds', [])  # older runs: none
            self.done = state['epoch']
            self.fixed_z = state['fixed_z'].to(fixed_z.device)
        self.device = fixed_z.device

    def epochs_left(self):
        """The epochs still to train, numbered from 1."""
        return range(self.done + 1, self.config['n_epochs'] + 1)

    def describe(self, epoch):
        """'epoch 3/15', for progress bars and messages."""
        return f'epoch {epoch}/{self.config["n_epochs"]}'

    @contextmanager
    def epoch(self, epoch):
        """Time the epoch's training; on an interrupt or a non-finite loss,
        say which checkpoint holds the last good epoch, then raise."""
        last_good = (f'{self.checkpoint} holds epoch {epoch - 1}'
                     if epoch > 1 else
                     'no epoch has finished, so there is no checkpoint')
        self._kept = None  # G is about to change
        start = time.perf_counter()
        try:
            yield
        except KeyboardInterrupt:  # raised on: the cells below must not run
            print(f'Interrupted in epoch {epoch}: {last_good}. '
                  f'{self.hints["go_on"]}')
            raise
        except FloatingPointError as error:
            raise FloatingPointError(
                f'{error} {last_good}. {self.hints["retry"]}') from None
        self.seconds.append(time.perf_counter() - start)

    def kept_generator(self):
        """The generator the run keeps (see kept_generator, the function),
        built once per epoch: after an epoch, the very one that end_epoch
        scored and drew, batch-norm statistics and all."""
        if self._kept is None:
            self._kept = kept_generator(self.G, self.average,
                                        self.config['z_size'])
        return self._kept

    def end_epoch(self, epoch, d_losses, g_losses, score=None):
        """Keep the epoch's losses, score the kept generator (when score is
        given), print a line, draw its fixed-noise samples and write the
        checkpoint."""
        self.losses['D'] += d_losses
        self.losses['G'] += g_losses
        kept = self.kept_generator()
        if score is not None:
            self.scores.append(score(kept))
        scored = (f', score {self.scores[-1]:.1f}' if score is not None
                  else '')
        print(f'{self.describe(epoch)}: '
              f'D loss {sum(d_losses) / len(d_losses):.3f}, '
              f'G loss {sum(g_losses) / len(g_losses):.3f}{scored} '
              f'({self.seconds[-1]:.1f} s)')
        self.samples.append(generate(kept, self.fixed_z))  # (n, 3, S, S)
        save_image_grid(self.samples[-1],
                        self.run_dir / 'samples' / f'epoch_{epoch:03d}.png')
        save_checkpoint(self.checkpoint, training_state(
            self.config, epoch, self.nets, self.stateful, self.losses,
            self.fixed_z, self.samples, self.scores, self.seconds))


def save_generator(path, G, config, score=None, data_dir=None):
    """Publish a trained generator: {'state_dict', 'config', 'score',
    'held_out'}, where config holds the Generator's keyword arguments (a
    plain dict), score the plain-number results it was published with, and
    held_out the fingerprint of data_dir's held-out faces (None without
    data_dir), which evaluate.py checks. Written atomically."""
    state = {'state_dict': {name: value.detach().cpu()
                            for name, value in G.state_dict().items()},
             'config': dict(config), 'score': score,
             'held_out': (None if data_dir is None
                          else held_out_fingerprint(data_dir))}
    return save_checkpoint(path, state)


def load_generator(path, generator_class, device='cpu'):
    """The generator saved by save_generator, built with
    generator_class(**config), its weights loaded (weights_only), on device
    and in eval mode. Returns (G, info), info = {'config', 'score',
    'held_out'} (held_out: None when it was saved without one)."""
    state = load_checkpoint(path, map_location='cpu')
    missing = [key for key in GENERATOR_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f'{path} is not a published generator: it lacks {missing}. '
            f'Training checkpoints (run/checkpoint.pt) hold the generator '
            f'under "G"; publish one with helpers.save_generator(path, G, '
            f'config, score).')
    G = generator_class(**state['config'])
    try:
        G.load_state_dict(state['state_dict'])
    except RuntimeError as err:
        raise CheckpointError(
            f'The weights in {path} do not fit {generator_class.__name__}'
            f'(**{state["config"]}): {err}'.splitlines()[0]) from err
    info = {key: state[key] for key in ('config', 'score')}
    info['held_out'] = state.get('held_out')
    return G.to(device).eval(), info
