"""Train the notebook's DCGAN from the command line, in one process or many.

One CPU or GPU, or data-parallel over the processes torchrun starts:

    python train.py --data processed-celeba-small.zip --out runs/a
    torchrun --standalone --nproc_per_node=4 train.py --data ... --out runs/a

The recipe is the notebook's: its exercise code (dcgan.py, exported from
it), its training run (facegen.run.TrainingRun) and the defaults of its
parameters cell. --out receives

    checkpoint.pt          after every epoch, in the notebook's format: run
                           the same command again to go on from it (the
                           notebook's training cell, run_dir set to --out,
                           goes on from it too, and the other way round)
    samples/epoch_NNN.png  the faces of the fixed noise after every epoch
    log.jsonl              one line per epoch: losses, time, speed, score
    generator.pt           at the end, for evaluate.py, with its score
    generated_faces.png    64 of its faces
    run.json               the run's figures, as the notebook's
                           assets/run.json (copied to assets/train_*.json,
                           python -m facegen.report puts them in
                           TRAINING.md)

With K processes each one trains on its own --batch-size / K images of every
batch and draws its own noise; DistributedDataParallel averages the
gradients, so every process holds the same weights after every step. Only
the first process writes files and prints.
"""
import argparse
import contextlib
import hashlib
import inspect
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

import dcgan
from facegen.faces import HELD_OUT_SIZE, load_faces, metrics_cache_dir
from facegen.fetch import prepare_data
from facegen.files import CheckpointError, atomic_write
from facegen.metrics import append_jsonl
from facegen.plots import save_image_grid
from facegen.report import run_figures, write_figures
from facegen.run import TrainingRun, save_generator
from facegen.runtime import (PRECISIONS, choose_device, choose_precision,
                             cpu_type, keep_freed_memory, seed_everything)
from facegen.score import describe as describe_score
from facegen.score import epoch_scorer, full_report, real_floor
from facegen.settings import (COURSE, DATA_ENV, DEFAULT_DATA_DIR,
                              check_config, quick_mode)

# The notebook's parameters cell where it departs from or adds to COURSE,
# and what FACEGEN_QUICK=1 changes there (a test checks they agree).
NOTEBOOK = dict(lr=0.0004, lr_decay=True, ema_decay=0.999, n_epochs=36,
                n_images=None, sample_size=16, n_score=HELD_OUT_SIZE, seed=42,
                precision='auto', print_every=50)
QUICK = dict(n_epochs=2, n_images=512, n_score=256)
MIN_IMAGE_SIZE = 16  # the score's image pyramid ends at 16x16
SCRIPT_HINTS = {  # TrainingRun's advice, in this command's words
    'go_on': 'Run the same command again to go on from there.',
    'other_dir': 'pass another --out',
    'retry': 'Start a new run (another --out) with a lower --lr or another '
             '--seed.',
}
LOG_NAME = 'log.jsonl'
GRID_SIZE = 64  # faces in generated_faces.png, 8 x 8
# How long a process waits for the others at a barrier. The others wait
# while the first one scores the finished run (minutes at 64 px, longer on
# a first run, which also computes the real-vs-real floor); NCCL's own
# default, 10 minutes, could run out.
GROUP_TIMEOUT = timedelta(hours=1)


def parse_args(argv=None):
    """The command line; the defaults are the notebook's parameters (its
    quick ones when FACEGEN_QUICK=1)."""
    quick = quick_mode()
    default = {**COURSE, **NOTEBOOK, **(QUICK if quick else {})}
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog='Many processes: torchrun --standalone --nproc_per_node=K '
               'train.py ... (--batch-size is the global batch, split '
               'across them).')
    add = parser.add_argument
    add('--data', metavar='PATH',
        help=f'the faces: a zip, extracted into --data-dir, or a folder of '
             f'images at any depth, used in place (default: ${DATA_ENV}, '
             f'else the course archive is downloaded)')
    add('--data-dir', metavar='DIR', default=DEFAULT_DATA_DIR,
        help='where a zip is extracted (default %(default)s, as for the '
             'notebook and evaluate.py, which then share it)')
    add('--out', metavar='DIR', required=True,
        help='the run folder; a run already there is continued')
    add('--image-size', type=int, metavar='N', default=default['image_size'],
        help='pixels per side: 16, 32, 64, ... (default %(default)s)')
    add('--conv-dim', type=int, metavar='N', default=default['conv_dim'],
        help="channels of D's first and G's last layer (default "
             "%(default)s)")
    add('--z-size', type=int, metavar='N', default=default['z_size'],
        help='size of the latent vectors (default %(default)s)')
    add('--batch-size', type=int, metavar='N', default=default['batch_size'],
        help='images per step over all processes (default %(default)s)')
    add('--epochs', type=int, metavar='N', default=default['n_epochs'],
        help='passes over the training faces (default %(default)s)')
    add('--n-images', type=int, metavar='N', default=default['n_images'],
        help='train on the first N training faces only (default: all)')
    add('--lr', type=float, metavar='X', default=default['lr'],
        help='Adam learning rate of both networks at the first step '
             '(default %(default)s; it falls to 0 unless --no-lr-decay)')
    add('--beta1', type=float, metavar='X', default=default['beta1'],
        help='Adam beta1 (default %(default)s)')
    add('--beta2', type=float, metavar='X', default=default['beta2'],
        help='Adam beta2 (default %(default)s)')
    add('--smooth', action='store_true', default=default['smooth'],
        help='label smoothing: real images are labelled 0.9, not 1')
    add('--no-lr-decay', dest='lr_decay', action='store_false',
        default=default['lr_decay'],
        help='keep the learning rates constant instead of lowering them '
             'linearly to 0 over the run')
    add('--ema-decay', type=float, metavar='X', default=default['ema_decay'],
        help="keep, score and publish the exponential moving average of G's "
             "weights with this decay (default %(default)s)")
    add('--no-ema', dest='ema_decay', action='store_const', const=None,
        help="keep G's last weights instead of their average (at 64 px "
             "they scored better on every seed tried: TRAINING.md)")
    add('--seed', type=int, metavar='N', default=default['seed'],
        help='random seed (default %(default)s)')
    add('--precision', choices=PRECISIONS, default=default['precision'],
        help='number format of the forward passes (default %(default)s; '
             'auto: bf16 where the hardware runs it fast)')
    add('--sample-size', type=int, metavar='N', default=default['sample_size'],
        help='faces of fixed noise drawn after every epoch (default '
             '%(default)s)')
    add('--n-score', type=int, metavar='N', default=default['n_score'],
        help='faces compared by the score after every epoch (default '
             '%(default)s)')
    add('--print-every', type=int, metavar='N', default=default['print_every'],
        help='batches between progress reports (default %(default)s)')
    add('--sync-bn', action='store_true',
        help='GPUs, many processes: batch norm over the whole batch '
             '(SyncBatchNorm) instead of over each process\'s share')
    args = parser.parse_args(argv)
    args.quick = quick
    args.command = shlex.join(['train.py', *(
        sys.argv[1:] if argv is None else argv)])  # for run.json
    return args


def make_config(args):
    """The notebook's config dict (the same keys, in the same order) from
    the command line; an impossible setting is refused, named."""
    config = dict(
        batch_size=args.batch_size, image_size=args.image_size,
        z_size=args.z_size, conv_dim=args.conv_dim, lr=args.lr,
        beta1=args.beta1, beta2=args.beta2, smooth=args.smooth,
        lr_decay=args.lr_decay, ema_decay=args.ema_decay,
        n_epochs=args.epochs,
        n_images=args.n_images, sample_size=args.sample_size,
        n_score=args.n_score, seed=args.seed, precision=args.precision,
        print_every=args.print_every, quick=args.quick)
    if args.sync_bn:  # a setting of the recipe: a resume must keep it
        config['sync_bn'] = True  # (absent otherwise: the notebook's keys)
    check_config(config)
    size = config['image_size']
    if size < MIN_IMAGE_SIZE:
        raise ValueError(
            f'--image-size must be a power of two of at least '
            f'{MIN_IMAGE_SIZE} (16, 32, 64, ...): the score compares image '
            f'pyramids down to 16x16; got {size}.')
    dcgan.n_resolution_steps(size)  # one that is no power of two: named
    return config


def local_batch_size(batch_size, world):
    """Each process's share of a batch of batch_size images; an error that
    says what to pass when it does not divide evenly."""
    if batch_size % world:
        lower = batch_size - batch_size % world
        nearest = f'{lower} or {lower + world}' if lower else world
        raise ValueError(
            f'--batch-size {batch_size} cannot be split evenly across '
            f'{world} processes: it is the batch of all processes together, '
            f'so pass a multiple of {world}, e.g. {nearest}.')
    return batch_size // world


def rank_seed(seed, rank, epoch):
    """The seed of process rank's random numbers (its latent vectors) in
    epoch of a run with many processes: another for every process and
    epoch, the same in every rerun, so resuming from a checkpoint repeats
    the run exactly."""
    text = f'facegen {seed} {epoch} {rank}'.encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(),
                          'little')


@dataclass(frozen=True)
class Processes:
    """This process among the ones torchrun started (rank 0 of 1 without
    torchrun), and the device it trains on."""
    rank: int = 0
    local_rank: int = 0  # its number on its machine
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))

    @property
    def main(self):
        """True for the process that writes the files and prints."""
        return self.rank == 0

    @property
    def distributed(self):
        """True when there are other processes to keep in step with."""
        return self.world > 1

    def barrier(self):
        """Wait until every process gets here."""
        if self.distributed:
            dist.barrier(**self._devices())

    def _devices(self):
        """The barrier's device argument: NCCL's is this process's GPU."""
        return ({'device_ids': [self.device.index]}
                if self.device.type == 'cuda' else {})

    def mean(self, *values):
        """The numbers values averaged over the processes: the same numbers
        on every process."""
        if not self.distributed:
            return values
        total = torch.tensor(values, dtype=torch.float64,
                             device=self.device)  # (len(values),)
        dist.all_reduce(total)
        return tuple((total / self.world).tolist())

    def agree(self, value):
        """The first process's value (picklable), on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value):
        """Every process's value (picklable), in rank order."""
        if not self.distributed:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def in_turns(self, work):
        """work() on every process, first on the first process, then on
        the first one of every other machine, then on the rest, with
        barriers between: a zip is extracted and the decoded-image cache
        written once per filesystem, never by two processes at once."""
        if not self.distributed:
            return work()
        result = None
        for turn in (self.rank == 0, self.rank != 0 and self.local_rank == 0,
                     self.local_rank != 0):
            if turn:
                result = work()
            self.barrier()
        return result


@contextlib.contextmanager
def processes():
    """The Processes of this run, read from torchrun's variables
    (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). With more than
    one, the process group is started here (NCCL with one GPU per process
    where there are GPUs, else gloo on the CPU), unless one is running
    already, and ended on the way out."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world == 1:
        yield Processes(device=choose_device())
        return
    if 'RANK' not in os.environ or 'LOCAL_RANK' not in os.environ:
        raise ValueError(
            f'WORLD_SIZE is {world} but RANK or LOCAL_RANK is not set: start '
            f'the processes with torchrun (torchrun --standalone '
            f'--nproc_per_node={world} train.py ...).')
    local_rank = int(os.environ['LOCAL_RANK'])
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise ValueError(
                f'Process {local_rank} of this machine has no GPU of its '
                f'own: it has {gpus}. Start at most {gpus} processes per '
                f'machine (torchrun --nproc_per_node={gpus}).')
        device, backend = torch.device('cuda', local_rank), 'nccl'
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device('cpu'), 'gloo'
    started = not dist.is_initialized()
    if started:
        dist.init_process_group(backend, timeout=GROUP_TIMEOUT)
    try:
        yield Processes(dist.get_rank(), local_rank, dist.get_world_size(),
                        device)
    finally:
        if started:
            dist.destroy_process_group()


@contextlib.contextmanager
def silenced(quiet):
    """Standard output thrown away while quiet (in every process but the
    first); errors still reach standard error."""
    if not quiet:
        yield
        return
    with open(os.devnull, 'w') as sink, contextlib.redirect_stdout(sink):
        yield


def describe(procs, config):
    """Print where the run trains and how its batch is shared."""
    if procs.distributed:
        where = ('with one GPU each' if procs.device.type == 'cuda'
                 else 'on CPUs')
        print(f'{procs.world} processes ({dist.get_backend()}) {where}; a '
              f'batch of {config["batch_size"]} is {procs.world} x '
              f'{local_batch_size(config["batch_size"], procs.world)} '
              f'images')
    if procs.device.type == 'cpu':
        print(f'CPU: {cpu_type()}, {torch.get_num_threads()} thread(s) per '
              f'process')


def shard_loader(images, batch_size, procs, seed):
    """This process's batches, (batch_size / processes, 3, S, S) floats in
    [0, 1]: a DistributedSampler reshuffles the training faces every epoch
    (set_epoch), the same way on every process, and deals each process its
    own share; drop_last keeps every batch full, as the notebook does."""
    dataset = dcgan.FaceDataset(images)
    sampler = DistributedSampler(dataset, num_replicas=procs.world,
                                 rank=procs.rank, shuffle=True, seed=seed,
                                 drop_last=True)
    return DataLoader(dataset,
                      batch_size=local_batch_size(batch_size, procs.world),
                      sampler=sampler, drop_last=True,
                      pin_memory=procs.device.type == 'cuda')


def load_data(args, config, procs):
    """(loader of this process's batches, held-out faces (N, 3, S, S) uint8
    for the score or None, data folder). One process: the notebook's
    dcgan.get_dataloader; many: shard_loader over the same faces."""
    size, n_images = config['image_size'], config['n_images']

    def load():
        data_dir = prepare_data(args.data_dir, source=args.data)
        faces = None  # one process: dcgan.get_dataloader loads them
        if procs.distributed:
            faces = load_faces(data_dir, size, n_images,
                               split='train')  # (N, 3, S, S) uint8
        held_out = (load_faces(data_dir, size, split='held_out')
                    if procs.main else None)  # (M, 3, S, S) uint8
        return data_dir, faces, held_out

    data_dir, faces, held_out = procs.in_turns(load)
    if procs.distributed:
        loader = shard_loader(faces, config['batch_size'], procs,
                              config['seed'])
    else:
        loader = dcgan.get_dataloader(config['batch_size'], size, data_dir,
                                      n_images)
    n_train = len(loader.dataset)
    if n_train < config['batch_size']:
        raise ValueError(
            f'--batch-size {config["batch_size"]} is larger than the '
            f'{n_train} training images, so an epoch has no full batch. '
            f'Lower --batch-size, or train on more images.')
    return loader, held_out, data_dir


def ddp_options(device):
    """DistributedDataParallel's settings for D and G.

    Buffers are not synchronised before every forward pass: D runs three
    times per step, and batch norm in training mode normalises by the
    batch's own statistics, so the running statistics (used in eval mode
    only, on the first process) need no broadcast. The first process's
    buffers, which the checkpoint holds, come out the same either way.
    find_unused_parameters stays off: train_step freezes the whole of D
    while G learns, so D's DDP expects no gradient then and reduces none.
    """
    accepted = inspect.signature(DistributedDataParallel).parameters
    keep_local = ({'forward_sync_buffers': False}  # PyTorch 2.14 and later
                  if 'forward_sync_buffers' in accepted
                  else {'broadcast_buffers': False})
    ids = {'device_ids': [device.index]} if device.type == 'cuda' else {}
    return {**keep_local, **ids}


def data_parallel(D, G, procs):
    """D and G wrapped in DistributedDataParallel, which averages their
    gradients over the processes during backward, or as they are in one
    process. The learner's train_step runs on them unchanged."""
    if not procs.distributed:
        return D, G
    options = ddp_options(procs.device)
    return (DistributedDataParallel(D, **options),
            DistributedDataParallel(G, **options))


def averaged_step(procs):
    """The learner's dcgan.train_step with its two losses averaged over the
    processes (the same numbers on every one, so that all of them stop
    together when one is not finite); for dcgan.train_epoch's step."""
    def step(*args):
        return procs.mean(*dcgan.train_step(*args))
    return step


def read_log(path):
    """The records of log.jsonl (none when it is missing); a line cut short
    by a crash is skipped."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding='utf-8').splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def start_log(path, done, world):
    """Keep the log lines of the epochs the checkpoint holds (lines of an
    earlier run in the folder, or of an epoch whose checkpoint was lost,
    go), and say so when this run has another number of processes than its
    last epoch had."""
    kept = [record for record in read_log(path) if record['epoch'] <= done]
    if kept and kept[-1].get('processes') != world:
        print(f'Epoch {done} was trained by {kept[-1].get("processes")} '
              f'process(es), this run has {world}: training goes on from '
              f'the checkpoint, but the data and noise each process sees '
              f'differ, so the result differs from an uninterrupted run.')
    lines = ''.join(json.dumps(record) + '\n' for record in kept)
    atomic_write(path, lambda f: f.write(lines), mode='w')


def log_epoch(path, run, epoch, d_losses, g_losses, batch_size, world):
    """Append the epoch's line to log.jsonl: mean losses, training seconds,
    images per second over all processes and the fast score."""
    seconds = run.seconds[-1]
    record = {
        'epoch': epoch,
        'd_loss': sum(d_losses) / len(d_losses),
        'g_loss': sum(g_losses) / len(g_losses),
        'seconds': round(seconds, 3),
        'images_per_second': round(len(d_losses) * batch_size / seconds, 1),
        'score': run.scores[-1] if run.scores else None,
        'processes': world,
    }
    append_jsonl(record, path)
    print(f'{run.describe(epoch)}: {record["images_per_second"]:,.0f} '
          f'images/s')
    return record


def publish(out, generator, config, held_out, train_faces, data_dir):
    """Score the generator the run keeps (TrainingRun.kept_generator: the
    weight average, batch norm re-estimated) and write generator.pt as the
    notebook publishes it (save_generator, the format evaluate.py loads).
    The score is the notebook's full report (full_report: SWD over three
    draws, real-vs-real floor, memorisation against the faces trained on);
    GRID_SIZE of the scored faces go to generated_faces.png. Returns the
    report."""
    result, fake = full_report(generator, config['z_size'], held_out,
                               train_faces, config['n_score'],
                               cache_dir=metrics_cache_dir(data_dir))
    save_image_grid(fake[:GRID_SIZE], out / 'generated_faces.png',
                    value_range=(0, 255))  # fake: (n, 3, S, S) uint8
    save_generator(out / 'generator.pt', generator, {key: config[key] for key
                   in ('z_size', 'conv_dim', 'image_size')}, result,
                   data_dir=data_dir)
    return result


def write_run_figures(out, run, config, result, faces, data_dir, procs,
                      amp_dtype, wall_seconds, command):
    """run.json: the figures the notebook writes to assets/run.json
    (report.run_figures), for this run, plus the command line that ran
    and the number of processes. faces: (held-out, training) uint8
    tensors. wall_seconds: None when the run went on from a checkpoint, as
    the command then ran for part of it only."""
    epoch_floor = real_floor(*faces, config['n_score'], repeats=1,
                             metric='swd_fast',
                             cache_dir=metrics_cache_dir(data_dir))
    figures = run_figures(config, result, run.scores, run.seconds,
                          epoch_floor, procs.device, amp_dtype, wall_seconds)
    figures.update(processes=procs.world, command=command)
    return write_figures(out / 'run.json', figures)


def train(args, config, procs):
    """The run: build as the notebook does, train the epochs the checkpoint
    in --out does not hold yet, publish the generator. Returns the path of
    generator.pt (on the first process; None on the others)."""
    started = time.perf_counter()
    out = Path(args.out)
    local_batch_size(config['batch_size'], procs.world)  # fail early
    if args.sync_bn and procs.distributed and procs.device.type != 'cuda':
        raise ValueError(
            '--sync-bn needs GPUs: SyncBatchNorm does not run on CPUs. Leave '
            'it out: each process then normalises by its own share of the '
            'batch.')
    describe(procs, config)
    keep_freed_memory()  # a step reuses the last one's memory: no page faults
    amp_dtype = procs.agree(choose_precision(procs.device,
                                             config['precision']))
    loader, held_out, data_dir = load_data(args, config, procs)
    # Seeded where the notebook seeds, right before its networks: the same
    # settings and threads repeat its run. The same start on every process.
    seed_everything(config['seed'])
    D, G = dcgan.build_networks(config['z_size'], config['conv_dim'],
                                config['image_size'], procs.device)
    if args.sync_bn and procs.distributed:  # batch norm over all shares
        D, G = (nn.SyncBatchNorm.convert_sync_batchnorm(net)
                for net in (D, G))
    d_optimizer, g_optimizer = dcgan.build_optimizers(
        D, G, config['lr'], (config['beta1'], config['beta2']))
    score = (epoch_scorer(held_out, config['z_size'], config['n_score'])
             if procs.main else None)
    fixed_z = torch.randn(config['sample_size'], config['z_size'],
                          device=procs.device)  # (sample_size, z_size)
    run = TrainingRun(out, config, D, G, d_optimizer, g_optimizer, loader,
                      fixed_z, hints=SCRIPT_HINTS)  # resumes
    resumed = run.done > 0
    done = procs.gather(run.done)
    if len(set(done)) > 1:
        raise ValueError(
            f'The processes found different checkpoints in {out} (epochs '
            f'done: {done}): put --out on a filesystem that every machine '
            f'shares.')
    log = out / LOG_NAME
    if procs.main:
        start_log(log, run.done, procs.world)
    D_ddp, G_ddp = data_parallel(D, G, procs)
    for epoch in run.epochs_left():
        if procs.distributed:
            loader.sampler.set_epoch(epoch)  # the same shuffle everywhere
            torch.manual_seed(rank_seed(config['seed'], procs.rank, epoch))
        with run.epoch(epoch):  # an interrupt or a NaN says what is saved
            d_losses, g_losses = dcgan.train_epoch(
                D_ddp, G_ddp, d_optimizer, g_optimizer, loader, config,
                procs.device, amp_dtype, run.describe(epoch), run.after_step,
                averaged_step(procs))
        if procs.main:  # scores, draws samples, writes the checkpoint
            run.end_epoch(epoch, d_losses, g_losses, score)
            log_epoch(log, run, epoch, d_losses, g_losses,
                      config['batch_size'], procs.world)
        procs.barrier()  # the others wait meanwhile
    published = None
    if procs.main:
        train_faces = load_faces(data_dir, config['image_size'],
                                 config['n_images'],
                                 split='train')  # (N, 3, S, S) uint8
        result = publish(out, run.kept_generator(), config, held_out,
                         train_faces, data_dir)
        print(describe_score(result))
        write_run_figures(out, run, config, result, (held_out, train_faces),
                          data_dir, procs, amp_dtype,
                          None if resumed else time.perf_counter() - started,
                          args.command)
        published = out / 'generator.pt'
        print(f'Saved {published}, {out / "generated_faces.png"} and '
              f'{out / "run.json"}. Score it again: python evaluate.py '
              f'--weights {published} --real {data_dir}')
    procs.barrier()
    return published


def main(argv=None):
    """Train as the command line says; returns the path of generator.pt
    (None in every process but the first)."""
    args = parse_args(argv)
    config = make_config(args)
    with processes() as procs, silenced(not procs.main):
        return train(args, config, procs)


if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except (OSError, ValueError, CheckpointError, FloatingPointError) as err:
        rank = os.environ.get('RANK', '0')
        sys.exit(f'train.py: {err}' if rank == '0' else
                 f'train.py (process {rank}): {err}')
