"""Time full DCGAN training steps, data loading included, for several data
paths.

Every row trains the same course model (facegen.settings.COURSE: conv_dim
32, z 100) with the same batch size for the same number of steps, so the
rows can be compared as ratios. Each row runs in a process of its own, so
that a process-wide setting (the memory allocator's) and the peak memory
are that row's alone. The rows take turns (short rounds in rotation, one
process working at a time), so that a shared CPU's drift over a run lands
on every row alike; each speed-up is the median of the per-round ratios:

* the course recipe as the student projects wrote it: ImageFolder + Resize +
  ToTensor through a DataLoader (num_workers 0, then 2), fp32, the C
  library's allocator as it comes;
* this project's path, one change per row: faces decoded once into memory
  (facegen.faces.load_faces), then channels_last, then freed memory kept
  for reuse (facegen.runtime.keep_freed_memory, glibc only), then bf16
  autocast where facegen.runtime.choose_precision picks it for this machine.

The row marked default trains as the notebook does with its own settings
(train.NOTEBOOK's precision); its figures are the report's headline. With
--tried, the changes in TRIED (torch.compile, Adam's fused kernel) are
timed on top of the default row as well, each in the rotation and set
against the default round by round: what was tried and left out.

Run from the project root (see experiments/README.md):

    python -m experiments.benchmark          # the table; 1-2 minutes on 2 cores
    python -m experiments.benchmark --json assets/benchmark.json  # + figures
    python -m experiments.benchmark --quick  # a few steps: does it run (CI)
    python -m experiments.benchmark --tried  # + the changes left out
"""
import argparse
import contextlib
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import datasets, transforms
from tqdm.auto import tqdm

import dcgan
import train
from experiments import reporting
from facegen.faces import load_faces
from facegen.fetch import is_image_name, prepare_data
from facegen.runtime import (can_keep_freed_memory, choose_device,
                             choose_precision, cpu_type, keep_freed_memory)
from facegen.settings import COURSE, DEFAULT_DATA_DIR

FULL_EPOCH_IMAGES = 32_600  # the course data set


def image_folder_root(data_dir):
    """data_dir, checked to suit torchvision's ImageFolder, which reads only
    the images in subfolders of its root (one class each), as the course
    data has them (data_dir/celeba/*.jpg). prepare_data also accepts a
    folder with the images directly in it; ImageFolder would reject such a
    folder or skip those images, so it is refused here with a ValueError
    that says what to do."""
    data_dir = Path(data_dir)
    loose = [path.name for path in data_dir.iterdir()
             if path.is_file() and is_image_name(path.name)]
    if loose:
        raise ValueError(
            f'{data_dir} holds images directly ({loose[0]}, ...), but the '
            f'course-recipe row reads the faces with torchvision ImageFolder, '
            f'which needs them in a subfolder, as the course data has them '
            f'({data_dir}/celeba/*.jpg). Move the images into a subfolder of '
            f'{data_dir} (e.g. {data_dir}/faces/) and run again.')
    return data_dir


class VisibleImageFolder(datasets.ImageFolder):
    """torchvision's ImageFolder without hidden subfolders (names starting
    with '.'), as facegen.faces.list_faces reads a folder. ImageFolder
    would take one for a class with no images and refuse the folder: a
    .facegen-cache that facegen put here when it was given a subfolder of
    this folder, or .ipynb_checkpoints."""

    def find_classes(self, directory):
        """(sorted names of the visible subfolders, name -> class index)."""
        classes = sorted(entry.name for entry in os.scandir(directory)
                         if entry.is_dir() and not entry.name.startswith('.'))
        if not classes:
            raise FileNotFoundError(
                f'{directory} has no subfolder of images (hidden ones left '
                f'out); the course-recipe row reads the faces with '
                f'ImageFolder, which needs them in one, as in '
                f'{directory}/celeba/*.jpg.')
        return classes, {name: index for index, name in enumerate(classes)}


def course_loader(data_dir, batch_size, image_size, num_workers,
                  is_valid_file=None, n_images=None):
    """The loader most student copies wrote: decode and resize every JPEG
    every epoch. is_valid_file: ImageFolder's filter (e.g.
    facegen.faces.is_training_file(data_dir)); n_images: only the first
    n_images it keeps, in ImageFolder's order."""
    transform = transforms.Compose([transforms.Resize(image_size),
                                    transforms.ToTensor()])
    dataset = VisibleImageFolder(data_dir, transform=transform,
                                 is_valid_file=is_valid_file)
    if n_images is not None:
        dataset = Subset(dataset, range(n_images))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True,
                      drop_last=True, num_workers=num_workers)


@dataclass(frozen=True)
class Row:
    """How one row trains: which loader (the course's 'image_folder', or
    'decoded' once), its worker processes, the autocast dtype (None: fp32),
    the memory layout, whether freed memory is kept for reuse, and two
    changes tried on top (--tried): both networks through torch.compile,
    and Adam's fused kernel."""
    loader: str
    workers: int = 0
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    keep_memory: bool = False
    compiled: bool = False
    fused_adam: bool = False


# Changes tried on the default row that it does without (--tried): the name
# they add to its name, and the Row fields they set.
TRIED = {
    'torch.compile': dict(compiled=True),
    'fused Adam': dict(fused_adam=True),
}


def row_loader(row, args, data_dir, n_images):
    """The DataLoader that row reads its batches from."""
    if row.loader == 'image_folder':
        return course_loader(image_folder_root(data_dir), args.batch_size,
                             args.image_size, row.workers)
    return dcgan.get_dataloader(args.batch_size, args.image_size, data_dir,
                                n_images)


def serve_row(conn, row, args, data_dir, n_images, device):
    """A row's own process: set the row up (allocator, loader, a warmed-up
    model), then time segments of steps as asked on conn: n_steps per
    request, None to stop. Answers ('ready', None), ('timed', (images/s,
    peak resident MB)) or ('error', traceback text)."""
    try:
        with open(os.devnull, 'w') as quiet, \
                contextlib.redirect_stdout(quiet):  # the parent reports
            if row.keep_memory:
                keep_freed_memory()
            loader = row_loader(row, args, data_dir, n_images)
            step = make_stepper(loader, args, device, row)
        conn.send(('ready', None))
        while (n_steps := conn.recv()) is not None:
            conn.send(('timed', time_segment(step, n_steps, args.batch_size,
                                             device)))
    except Exception:
        conn.send(('error', traceback.format_exc()))
    finally:
        conn.close()


class RowProcess:
    """A row running in a process of its own (see serve_row); calling it
    with n_steps times that many steps there and returns (images/s, peak
    resident MB of that process)."""

    def __init__(self, name, row, args, data_dir, n_images, device):
        self.name = name
        context = multiprocessing.get_context('spawn')
        self.conn, child_conn = context.Pipe()
        # Not a daemon: the course row's DataLoader starts processes too.
        self.process = context.Process(
            target=serve_row,
            args=(child_conn, row, args, data_dir, n_images, device))
        self.process.start()
        child_conn.close()
        try:
            self._answer()  # set up and warmed up
        except RuntimeError:
            self.close()
            raise

    def __call__(self, n_steps):
        self.conn.send(n_steps)
        return self._answer()

    def _answer(self):
        try:
            kind, value = self.conn.recv()
        except EOFError:
            self.process.join()
            raise RuntimeError(
                f'The process of benchmark row {self.name!r} ended without '
                f'an answer (exit code {self.process.exitcode}); if it was '
                f'killed for memory, run with a smaller --batch-size.'
            ) from None
        if kind == 'error':
            raise RuntimeError(
                f'Benchmark row {self.name!r} failed in its process:\n'
                f'{value}')
        return value

    def close(self):
        """Stop the row's process (it finishes its current answer first);
        closing again does nothing."""
        if self.conn.closed:
            return
        with contextlib.suppress(OSError):  # the process may be gone
            self.conn.send(None)
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.terminate()
        self.conn.close()


def build_models(args, device, channels_last, fused_adam=False):
    """The course model, built as in the notebook, with its two optimizers
    (the course's learning rate and betas; with fused_adam, Adam's fused
    kernel instead of the notebook's build_optimizers)."""
    D, G = dcgan.build_networks(args.z_size, args.conv_dim, args.image_size,
                                device)
    if not channels_last:
        for net in (D, G):
            net.to(memory_format=torch.contiguous_format)
    betas = (COURSE['beta1'], COURSE['beta2'])
    if fused_adam:
        return (D, G, *(torch.optim.Adam(net.parameters(), lr=COURSE['lr'],
                                         betas=betas, fused=True)
                        for net in (D, G)))
    return (D, G, *dcgan.build_optimizers(D, G, COURSE['lr'], betas))


def batches(loader):
    """Endless batches of images: a new pass over the loader whenever one
    ends."""
    while True:
        for images, _ in loader:
            yield images


def make_stepper(loader, args, device, row):
    """A fresh course model with its optimizers, set up as row says, and a
    function that runs one full training step of it (data loading
    included) on the next batch of loader."""
    torch.manual_seed(0)
    D, G, d_opt, g_opt = build_models(args, device, row.channels_last,
                                      row.fused_adam)
    if row.compiled:  # compiles during the warm-up steps, off the clock
        D, G = torch.compile(D), torch.compile(G)
    memory_format = (torch.channels_last if row.channels_last
                     else torch.contiguous_format)
    stream = batches(loader)

    def step():
        images = next(stream).to(device, memory_format=memory_format,
                                 non_blocking=True)
        dcgan.train_step(D, G, d_opt, g_opt, images, args.z_size, smooth=True,
                         amp_dtype=row.amp_dtype)

    for _ in range(args.warmup):
        step()
    synchronize(device)
    return step


def time_segment(step, n_steps, batch_size, device):
    """(images per second, peak resident MB) over n_steps calls of step."""
    reset_peak_rss()
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    synchronize(device)
    return n_steps * batch_size / (time.perf_counter() - start), peak_rss_mb()


def round_speedups(rates, course_rates):
    """Speed-ups over the course recipe: one per round, against the course
    row's turn in the same round; a row timed in one block is set against
    the course row's median."""
    if len(rates) == 1:
        return [rates[0] / statistics.median(course_rates)]
    return [rate / course
            for rate, course in zip(rates, course_rates, strict=True)]


def time_interleaved(segments, args):
    """Per row, the images/s of each round and the peak resident MB over all
    rounds; segments maps each row's name to a function that times n steps
    of it (a RowProcess), returning (images/s, peak resident MB).

    A shared cloud CPU drifts by tens of percent over seconds, so timing the
    rows one after another would fold that drift into their ratios. Here
    every round gives each row a short turn (the starting row rotates), so
    that each round's ratios compare rows measured under the same
    conditions.
    """
    names = list(segments)
    per_round = args.steps // args.rounds
    rates, peaks = {name: [] for name in names}, dict.fromkeys(names, 0.0)
    for round_ in tqdm(range(args.rounds), desc='benchmark rounds'):
        first = round_ % len(names)
        for name in names[first:] + names[:first]:
            img_per_s, peak = segments[name](per_round)
            rates[name].append(img_per_s)
            peaks[name] = max(peaks[name], peak)
    return rates, peaks


def synchronize(device):
    """Wait for queued GPU work, so that timings cover it."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def reset_peak_rss():
    """Start a new peak-memory measurement (Linux: clear_refs resets
    VmHWM)."""
    try:
        Path('/proc/self/clear_refs').write_text('5')
    except OSError:  # not Linux: peak_rss_mb then gives the peak since start
        pass


def peak_rss_mb():
    """Peak resident memory of this process since reset_peak_rss(), in
    MB."""
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # macOS reports bytes, Linux KiB
    return peak / 2**20 if sys.platform == 'darwin' else peak / 2**10


def train_flops_per_image(args, device):
    """FLOPs of one full training step (both networks, forward and
    backward), per image."""
    D, G, d_opt, g_opt = build_models(args, device, channels_last=False)
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size,
                        device=device)
    with FlopCounterMode(display=False) as counter:
        dcgan.train_step(D, G, d_opt, g_opt, images, args.z_size)
    return counter.get_total_flops() / args.batch_size


def matmul_flops_per_s(device, dtype, size=2048, seconds=1.0):
    """Throughput of a large square matmul: the practical ceiling for this
    dtype."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    synchronize(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
        synchronize(device)
    return 2 * size**3 * runs / (time.perf_counter() - start)


def time_cache(data_dir, image_size, n_images):
    """Seconds to decode the data into a fresh cache, then to load that cache
    again."""
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        load_faces(data_dir, image_size, n_images, cache_dir=cache_dir,
                   split='train')
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        load_faces(data_dir, image_size, n_images, cache_dir=cache_dir,
                   split='train')
        return build_s, time.perf_counter() - start


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog='python -m experiments.benchmark',
                                     description=__doc__.splitlines()[0])
    parser.add_argument(
        '--data-dir', default=DEFAULT_DATA_DIR,
        help='where the faces are, or are put by facegen.fetch.prepare_data '
             '(from FACEGEN_DATA or the download); the course-recipe row '
             'needs them in subfolders, as in DIR/celeba/*.jpg')
    parser.add_argument('--steps', type=int, default=48,
                        help='timed steps per row')
    parser.add_argument('--rounds', type=int, default=8,
                        help='the timed steps of each row are split into this '
                             'many turns, taken in rotation with the other '
                             'rows')
    parser.add_argument('--warmup', type=int, default=3,
                        help='untimed steps per row')
    add_model_arguments(parser)
    parser.add_argument('--quick', action='store_true',
                        help='3 steps per row (3 rounds) at batch 32: checks '
                             'that everything runs')
    parser.add_argument('--tried', action='store_true',
                        help='also time the changes tried on the default '
                             'path that it does without (TRIED), each in '
                             'the rotation')
    parser.add_argument('--json', type=Path,
                        help='write the figures to this file (the committed '
                             'ones: assets/benchmark.json)')
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.warmup, args.batch_size = 3, 3, 1, 32
    check_rounds(parser, args)
    return args


def add_model_arguments(parser):
    """The options every script that times training steps shares: the
    course model's sizes and the precision of the project's path."""
    for name in ('batch_size', 'image_size', 'conv_dim', 'z_size'):
        parser.add_argument('--' + name.replace('_', '-'), type=int,
                            default=COURSE[name],
                            help='default: the course recipe, %(default)s')
    parser.add_argument('--precision', default='auto',
                        choices=('auto', 'fp32', 'bf16'),
                        help="number format of the project's fast path "
                             "(default: auto, bf16 where this machine runs "
                             "it fast)")


def check_rounds(parser, args):
    """Refuse --rounds that --steps cannot be split into."""
    if not 1 <= args.rounds <= args.steps:
        parser.error(f'--rounds must be between 1 and --steps ({args.steps}); '
                     f'got {args.rounds}.')


def rows_for(amp_dtype):
    """name: Row for every row timed in rotation, in order: the course
    recipe, then the project's path one change at a time, bf16 autocast
    (amp_dtype) last where it is not None."""
    keep = can_keep_freed_memory()
    rows = {
        'course recipe, num_workers=0': Row('image_folder'),
        'decoded once, fp32': Row('decoded'),
        'decoded once, fp32, channels_last': Row('decoded',
                                                 channels_last=True),
    }
    if keep:
        rows['decoded once, fp32, channels_last, freed memory kept'] = Row(
            'decoded', channels_last=True, keep_memory=True)
    if amp_dtype is not None:
        name = 'decoded once, bf16 autocast (G output fp32), channels_last'
        rows[name + (', freed memory kept' if keep else '')] = Row(
            'decoded', amp_dtype=amp_dtype, channels_last=True,
            keep_memory=keep)
    return rows


def default_row(rows, amp_dtype):
    """The name of the row that trains as the notebook does: the last of
    rows (the one with every change) in the notebook's autocast dtype
    amp_dtype (None: fp32)."""
    names = [name for name, row in rows.items() if row.amp_dtype == amp_dtype]
    if not names:
        raise ValueError(
            f'No row trains in {amp_dtype}, the precision the notebook '
            f'uses here: run without --precision fp32, so that the bf16 '
            f'row is timed.')
    return names[-1]


def tried_rows(rows, default_name):
    """name: Row for each change in TRIED, made to the default row."""
    return {f'{default_name}, {label}': replace(rows[default_name], **change)
            for label, change in TRIED.items()}


def run(args):
    """Measure every row; returns the report as a plain dict."""
    device = choose_device()
    amp_dtype = choose_precision(device, args.precision)  # the bf16 row's
    # The notebook's choice: the same one unless --precision asked another
    # (a second 'auto' would time the formats again, and might disagree).
    notebook_dtype = (
        amp_dtype if args.precision == train.NOTEBOOK['precision']
        else choose_precision(device, train.NOTEBOOK['precision']))
    data_dir = prepare_data(args.data_dir)
    image_folder_root(data_dir)  # fails before the long parts
    # Enough images for every timed step to see new data, at most all.
    n_images = (None if not args.quick
                else (args.steps + args.warmup) * args.batch_size)
    cache_build_s, cache_load_s = time_cache(data_dir, args.image_size,
                                             n_images)
    # Builds the cache that the rows' processes load.
    decoded = dcgan.get_dataloader(args.batch_size, args.image_size,
                                   data_dir, n_images)
    epoch_images = (FULL_EPOCH_IMAGES if not args.quick
                    else len(decoded.dataset))
    rows = rows_for(amp_dtype)
    default_name = default_row(rows, notebook_dtype)
    tried = tried_rows(rows, default_name) if args.tried else {}

    flops = train_flops_per_image(args, device)
    peaks = {None: matmul_flops_per_s(device, torch.float32)}
    if amp_dtype is not None:
        peaks[amp_dtype] = matmul_flops_per_s(device, amp_dtype)

    with contextlib.ExitStack() as running:
        def start(name, row):
            process = RowProcess(name, row, args, data_dir, n_images, device)
            running.callback(process.close)
            return process

        # The worker processes of num_workers=2 decode ahead in the
        # background, so that row gets one block of its own: interleaved,
        # its decoding would run in others' turns.
        workers = start('course recipe, num_workers=2',
                        Row('image_folder', workers=2))
        workers_rate, workers_peak = workers(args.steps)
        workers.close()  # ends its worker processes before the other rows
        segments = {name: start(name, row)
                    for name, row in {**rows, **tried}.items()}
        rates, peak_mb = time_interleaved(segments, args)
    course_rates = rates['course recipe, num_workers=0']

    def row(name, rates_, peak, dtype):
        img_per_s = statistics.median(rates_)
        speedups = round_speedups(rates_, course_rates)
        return {'name': name, 'default': name == default_name,
                'img_per_s': img_per_s, 'epoch_s': epoch_images / img_per_s,
                'speedup': statistics.median(speedups),
                'speedup_min': min(speedups), 'speedup_max': max(speedups),
                'flop_fraction': flops * img_per_s / peaks[dtype],
                'peak_rss_mb': peak}

    results = [row(name, rates[name], peak_mb[name], spec.amp_dtype)
               for name, spec in rows.items()]
    tried_results = []
    for name, spec in tried.items():
        result = row(name, rates[name], peak_mb[name], spec.amp_dtype)
        ratios = round_speedups(rates[name], rates[default_name])
        result.update(vs_default=statistics.median(ratios),
                      vs_default_min=min(ratios), vs_default_max=max(ratios))
        tried_results.append(result)
    results.insert(1, row('course recipe, num_workers=2', [workers_rate],
                          workers_peak, None))
    default = next(row for row in results if row['default'])
    gpu = (torch.cuda.get_device_name(device) if device.type == 'cuda'
           else None)
    return {
        'cpu': cpu_type(), 'device': str(device), 'gpu': gpu,
        'torch': torch.__version__, 'python': platform.python_version(),
        'threads': torch.get_num_threads(), 'batch_size': args.batch_size,
        'steps': args.steps, 'rounds': args.rounds,
        'epoch_images': epoch_images, 'train_mflop_per_image': flops / 1e6,
        'matmul_gflop_per_s': {str(k or torch.float32): v / 1e9
                               for k, v in peaks.items()},
        'cache_build_s': cache_build_s, 'cache_load_s': cache_load_s,
        **{key: default[key] for key in ('speedup', 'img_per_s', 'epoch_s',
                                         'peak_rss_mb', 'flop_fraction')},
        'rows': results, 'tried': tried_results,
    }


def format_table(report):
    """The report as a Markdown table plus a few lines of context."""
    lines = ['| path | images/s | epoch (s) | speed-up (range over rounds) | '
             'share of matmul peak | peak RSS (MB) |',
             '|---|---:|---:|---:|---:|---:|']
    for row in report['rows']:
        mark = ' **(default)**' if row['default'] else ''
        spread = (f" ({row['speedup_min']:.2f}-{row['speedup_max']:.2f})"
                  if row['speedup_max'] > row['speedup_min'] else '')
        lines.append(f"| {row['name']}{mark} | {row['img_per_s']:,.0f} | "
                     f"{row['epoch_s']:.1f} | {row['speedup']:.2f}x{spread} | "
                     f"{row['flop_fraction']:.0%} | "
                     f"{row['peak_rss_mb']:,.0f} |")
    if report.get('tried'):  # measured with --tried
        lines += ['', '| tried on the default path | images/s | against the '
                  'default (range over rounds) |', '|---|---:|---:|']
        lines += [f"| {row['name']} | {row['img_per_s']:,.0f} | "
                  f"{row['vs_default']:.2f}x ({row['vs_default_min']:.2f}-"
                  f"{row['vs_default_max']:.2f}) |" for row in report['tried']]
    where = report['gpu'] or f"{report['cpu']}, {report['threads']} threads"
    peaks = ', '.join(f'{k.replace("torch.", "")} {v:,.0f}'
                      for k, v in report['matmul_gflop_per_s'].items())
    lines += [
        '',
        f"Measured on {where}, torch {report['torch']}; batch "
        f"{report['batch_size']}, {report['steps']} timed steps per row in "
        f"{report['rounds']} interleaved rounds (num_workers=2: one block); "
        f"medians over rounds; epoch = {report['epoch_images']:,} images.",
        f"Training step: {report['train_mflop_per_image']:.0f} MFLOP per "
        f"image; matmul peak (GFLOP/s): {peaks}.",
        f"Decode cache: built in {report['cache_build_s']:.1f} s, loaded "
        f"again in {report['cache_load_s']:.2f} s. Peak RSS: the row's own "
        f"process (DataLoader workers not included)."]
    return '\n'.join(lines)


def main(argv=None):
    return reporting.report(run, format_table, parse_args(argv))


if __name__ == '__main__':
    main()
