"""Measure what training in several processes on one machine costs or adds.

Two measurements, both on this machine's usable cores (T of them):

* throughput: the project's trainer (train.py) run as 1 process with T
  threads, and as T processes with 1 thread each (torchrun, the gloo
  backend of DistributedDataParallel on the CPU). Each run trains 2 epochs
  in a fresh run folder; its speed is the images per second of the last
  epoch from the run's log.jsonl (the first epoch includes warm-up).
  The two layouts take turns over several rounds, the one that goes first
  alternating, so that a shared CPU's drift lands on both alike; the ratio
  is the median of the per-round ratios;
* memory: the decoded-image cache (facegen.faces.load_faces) is
  memory-mapped, so T processes that load it hold one copy in the page
  cache. T processes load it, touch every page and report their memory
  (/proc/self/smaps_rollup, Linux only), once with the tensor as mapped and
  once with a copy in each process.

Run from the project root (see experiments/README.md):

    python -m experiments.processes          # the tables; minutes on 2 cores
    python -m experiments.processes --json assets/processes.json  # + figures
    python -m experiments.processes --quick  # tiny runs: does it run (CI)
"""
import argparse
import contextlib
import gc
import io
import multiprocessing
import os
import platform
import queue
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from experiments import reporting
from facegen.faces import cache_file, load_faces
from facegen.fetch import prepare_data
from facegen.report import replace_between
from facegen.runtime import choose_precision, cpu_type
from facegen.settings import COURSE, DEFAULT_DATA_DIR

ROOT = Path(__file__).resolve().parents[1]  # where train.py is
FULL_CELEBA_IMAGES = 202_599  # aligned CelebA, all of it
SMAPS = Path('/proc/self/smaps_rollup')  # Linux: this process's memory
SMAPS_FIELDS = {'Rss': 'rss', 'Pss': 'pss', 'Private_Clean': 'private',
                'Private_Dirty': 'private'}  # the two private kinds summed
STDERR_TAIL = 3000  # characters of a failed command's output shown
WORKER_TIMEOUT_S = 600  # a cache worker that takes longer is stuck
LAYOUTS = ('one', 'many')  # 1 process x T threads, T processes x 1 thread


def usable_cpus():
    """The CPU numbers this process may run on (fewer than os.cpu_count()
    in a container or under taskset)."""
    if hasattr(os, 'sched_getaffinity'):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def core_layout(cpus):
    """How the usable CPUs sit on physical cores, from Linux's sysfs (on a
    virtual machine: as the hypervisor reports it). Two hardware threads of
    one core share its arithmetic units, two cores do not. physical_cores
    and threads_per_core are None where the topology cannot be read."""
    cores = set()
    for cpu in cpus:
        topology = Path(f'/sys/devices/system/cpu/cpu{cpu}/topology')
        try:
            cores.add(((topology / 'physical_package_id').read_text().strip(),
                       (topology / 'core_id').read_text().strip()))
        except OSError:  # not Linux
            return {'usable_cpus': len(cpus), 'physical_cores': None,
                    'threads_per_core': None}
    return {'usable_cpus': len(cpus), 'physical_cores': len(cores),
            'threads_per_core': len(cpus) / len(cores)}


def describe_layout(layout):
    """'2 usable CPUs on 2 physical cores (1 hardware thread each)'."""
    cpus = layout['usable_cpus']
    text = f'{cpus} usable CPU{"s" if cpus > 1 else ""}'
    if layout['physical_cores'] is None:
        return text + ' (core layout unknown)'
    threads = layout['threads_per_core']
    return (f"{text} on {layout['physical_cores']} physical core(s) "
            f"({threads:g} hardware thread{'s' if threads != 1 else ''} "
            f"each)")


# ---------------------------------------------------------------- throughput

def train_args(args, data_dir, out):
    """train.py's options for one measured run, the same for both
    layouts."""
    return ['--data', str(data_dir), '--out', str(out),
            '--epochs', str(args.epochs), '--n-images', str(args.n_images),
            '--n-score', str(args.n_score), '--precision', args.precision,
            '--image-size', str(args.image_size),
            '--batch-size', str(args.batch_size),
            '--conv-dim', str(args.conv_dim), '--z-size', str(args.z_size)]


def layout_command(layout, n_processes, options):
    """(command, environment) that runs train.py in the given layout: 'one'
    process with n_processes threads, or 'many' (n_processes processes of
    one thread each, started by torchrun)."""
    if layout == 'one':
        command = [sys.executable, 'train.py', *options]
        threads = n_processes
    else:
        command = [sys.executable, '-m', 'torch.distributed.run',
                   '--standalone', f'--nproc_per_node={n_processes}',
                   'train.py', *options]
        threads = 1
    return command, {**os.environ, 'OMP_NUM_THREADS': str(threads)}


def run_command(command, env):
    """Run command from the project root; its standard output. A failure
    raises a RuntimeError that shows the end of what it wrote, so that the
    reason is on screen."""
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip())[-STDERR_TAIL:]
        raise RuntimeError(
            f'This command failed (exit status {done.returncode}):\n'
            f'  {shlex.join(command)}\nThe end of its output:\n{tail}\n'
            f'Fix what it says (or run the command yourself from '
            f'{ROOT} to see all of it), then run this script again.')
    return done.stdout


def last_epoch_rate(run_dir, n_processes):
    """Images per second of the last epoch in run_dir's log.jsonl, counted
    over all processes, scoring time left out."""
    # Imported here: the cache workers spawned below import this module and
    # need nothing of train.py's.
    from train import LOG_NAME, read_log
    records = read_log(Path(run_dir) / LOG_NAME)
    if not records:
        raise RuntimeError(
            f'train.py finished without writing {LOG_NAME} in {run_dir}: '
            f'has its log format changed? This script reads the key '
            f'images_per_second of its last line.')
    last = records[-1]
    if last.get('processes', n_processes) != n_processes:
        raise RuntimeError(
            f'The last epoch in {run_dir} was trained by '
            f'{last["processes"]} process(es), not {n_processes}: torchrun '
            f'started another number of processes than asked for.')
    return last['images_per_second']


def run_layout(layout, args, data_dir):
    """(images per second of the last epoch, wall seconds of the whole
    command) of one train.py run in layout, in a fresh run folder."""
    with tempfile.TemporaryDirectory(prefix='processes-') as out:
        command, env = layout_command(layout, args.processes,
                                      train_args(args, data_dir, out))
        start = time.perf_counter()
        run_command(command, env)
        wall_s = time.perf_counter() - start
        n_processes = 1 if layout == 'one' else args.processes
        return last_epoch_rate(out, n_processes), wall_s


def layout_order(round_):
    """The layouts in the order round_ runs them: the first one
    alternates."""
    return LAYOUTS if round_ % 2 == 0 else LAYOUTS[::-1]


def ratio_summary(one_rates, many_rates):
    """many / one in each round, their median, min and max: each ratio
    compares two runs made close together in time."""
    ratios = [many / one
              for one, many in zip(one_rates, many_rates, strict=True)]
    return {'per_round': ratios, 'median': statistics.median(ratios),
            'min': min(ratios), 'max': max(ratios)}


def layout_name(layout, n_processes):
    """'1 process x 2 threads' or '2 processes x 1 thread'."""
    if layout == 'one':
        return (f'1 process x {n_processes} thread'
                f'{"s" if n_processes > 1 else ""}')
    return (f'{n_processes} process{"es" if n_processes > 1 else ""} '
            f'x 1 thread')


def measure_throughput(args, data_dir):
    """The throughput rows (one per layout: images/s and wall seconds per
    round, median images/s) and the ratio summary."""
    rates = {layout: [] for layout in LAYOUTS}
    walls = {layout: [] for layout in LAYOUTS}
    for round_ in range(args.rounds):
        for layout in layout_order(round_):
            rate, wall_s = run_layout(layout, args, data_dir)
            rates[layout].append(rate)
            walls[layout].append(wall_s)
            print(f'round {round_ + 1}/{args.rounds}, '
                  f'{layout_name(layout, args.processes)}: {rate:,.0f} '
                  f'images/s ({wall_s:.0f} s in all)', flush=True)
    rows = [{'layout': layout, 'name': layout_name(layout, args.processes),
             'processes': 1 if layout == 'one' else args.processes,
             'threads_per_process': (args.processes if layout == 'one'
                                     else 1),
             'images_per_second': rates[layout],
             'median': statistics.median(rates[layout]),
             'wall_s': walls[layout]}
            for layout in LAYOUTS]
    return rows, ratio_summary(rates['one'], rates['many'])


# -------------------------------------------------------------------- memory

def read_memory(path=SMAPS):
    """This process's resident (Rss), proportional (Pss: each shared page
    divided among the processes that map it) and private memory, in kB,
    from Linux's smaps_rollup."""
    memory = dict.fromkeys(('rss', 'pss', 'private'), 0)
    for line in Path(path).read_text().splitlines():
        field, _, value = line.partition(':')
        if field in SMAPS_FIELDS:
            memory[SMAPS_FIELDS[field]] += int(value.split()[0])  # kB
    return memory


def cache_worker(data_dir, image_size, cache_dir, mode, barriers, results):
    """One of the processes of measure_sharing: when all have started,
    measure its memory, load the training faces (mode 'mapped': as
    load_faces returns them; 'copied': a copy in this process's own
    memory) and touch every page; when all have, measure again, send
    ('memory', {'before': kB, 'after': kB}) through results and wait until
    all have measured. A failure sends ('error', traceback) and breaks the
    barriers, so that the others stop waiting."""
    started, loaded, measured = barriers
    try:
        torch.set_num_threads(1)
        # Pages of the libraries count in the Pss of every process that
        # maps them: both readings are taken with all processes started.
        started.wait(WORKER_TIMEOUT_S)
        before = read_memory()
        with contextlib.redirect_stdout(io.StringIO()):  # T times 'Loaded'
            images = load_faces(data_dir, image_size, split='train',
                                cache_dir=cache_dir)  # (N, 3, S, S) uint8
        if mode == 'copied':
            images = images.clone()  # the mapped tensor is dropped: unmapped
            gc.collect()
        int(images.sum())  # reads every page
        loaded.wait(WORKER_TIMEOUT_S)  # all alive and loaded together
        results.put(('memory', {'before': before, 'after': read_memory()}))
        measured.wait(WORKER_TIMEOUT_S)  # nobody exits before all measured
    except Exception:
        results.put(('error', traceback.format_exc()))
        for barrier in barriers:
            barrier.abort()


def collect(results, workers, n_processes):
    """The n_processes measurements the workers send; a RuntimeError with
    the first worker's traceback when one failed, or that says so when one
    died without a word or none answered in time."""
    memory, errors = [], []
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while len(memory) + len(errors) < n_processes:
        try:
            kind, value = results.get(timeout=1)
        except queue.Empty:
            codes = [worker.exitcode for worker in workers]
            if any(code not in (None, 0) for code in codes):
                raise RuntimeError(
                    f'A cache-measuring process died without a word (exit '
                    f'codes: {codes}; -9 means killed, most often for want '
                    f'of memory). Run again with a smaller --image-size, or '
                    f'on a machine with more memory.') from None
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f'The cache-measuring processes sent nothing for '
                    f'{WORKER_TIMEOUT_S} s (exit codes: {codes}). Is the '
                    f'machine swapping? Run again when it is less busy, or '
                    f'with a smaller --image-size.') from None
            continue
        (memory if kind == 'memory' else errors).append(value)
    # A worker whose barrier another broke reports BrokenBarrierError: show
    # the cause rather than the echo.
    errors.sort(key=lambda text: 'BrokenBarrierError' in text)
    if errors:
        raise RuntimeError(f'A cache-measuring process failed:\n{errors[0]}')
    return memory


def measure_sharing(data_dir, image_size, n_processes, mode,
                    cache_dir=None):
    """Start n_processes processes that hold the training faces together
    (cache_worker, in mode 'mapped' or 'copied'); the memory of each, in kB,
    before and after loading."""
    context = multiprocessing.get_context('spawn')  # fresh, like torchrun's
    barriers = [context.Barrier(n_processes) for _ in range(3)]
    results = context.Queue()
    workers = [context.Process(
        target=cache_worker, daemon=True,
        args=(str(data_dir), image_size, cache_dir, mode, barriers, results))
        for _ in range(n_processes)]
    for worker in workers:
        worker.start()
    try:
        return collect(results, workers, n_processes)
    except BaseException:
        for barrier in barriers:  # the living stop waiting for the dead
            barrier.abort()
        raise
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():  # stuck at a barrier: ours to end
                worker.terminate()
                worker.join()


def memory_summary(measurements):
    """Means over the processes, in MB: private and Pss memory after
    loading, and what loading the faces added to each."""
    def mean_mb(key, added):
        return statistics.mean(
            (m['after'][key] - (m['before'][key] if added else 0)) / 2**10
            for m in measurements)
    return {'private_mb': mean_mb('private', False),
            'pss_mb': mean_mb('pss', False),
            'private_added_mb': mean_mb('private', True),
            'pss_added_mb': mean_mb('pss', True),
            'processes': measurements}


def measure_cache(data_dir, image_size, n_processes, smaps=SMAPS):
    """The cache of data_dir's training faces at image_size: its size,
    the time to load it again (list, map, checksum) and, on Linux, the memory
    of n_processes processes holding it 'mapped' and 'copied'."""
    load_faces(data_dir, image_size, split='train')  # builds it if missing
    path = cache_file(data_dir, image_size, split='train')
    if not path.is_file():
        raise RuntimeError(
            f'load_faces wrote no cache file {path}: is its folder '
            f'writable? The memory figures need the cache.')
    start = time.perf_counter()
    images = load_faces(data_dir, image_size,
                        split='train')  # (N, 3, S, S) uint8
    load_s = time.perf_counter() - start
    n_images, image_bytes = len(images), images.numel()
    del images  # this process holds no page: the workers' Pss is theirs
    gc.collect()
    report = {
        'images': n_images, 'image_size': image_size,
        'tensor_bytes': image_bytes,
        'file_bytes': path.stat().st_size,
        'load_s': load_s, 'n_processes': n_processes,
        'full_celeba': {
            'images': FULL_CELEBA_IMAGES,
            'bytes': FULL_CELEBA_IMAGES * 3 * image_size**2,
            'how': f'arithmetic, not measured: {FULL_CELEBA_IMAGES:,} x 3 x '
                   f'{image_size} x {image_size} bytes'},
    }
    if not Path(smaps).exists():
        report['memory'] = None
        report['memory_skipped'] = (
            f'{smaps} does not exist (it does on Linux only), so the '
            f'memory of each process was not measured')
        print(f'Per-process memory not measured: {report["memory_skipped"]}.')
        return report
    report['memory'] = {
        mode: memory_summary(measure_sharing(data_dir, image_size,
                                             n_processes, mode))
        for mode in ('mapped', 'copied')}
    return report


# ------------------------------------------------------------------- report

def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog='python -m experiments.processes',
                                     description=__doc__.splitlines()[0])
    parser.add_argument(
        '--data-dir', default=DEFAULT_DATA_DIR,
        help='where the faces are, or are put by facegen.fetch.prepare_data '
             '(from FACEGEN_DATA or the download)')
    parser.add_argument('--rounds', type=int, default=3,
                        help='rounds of one run per layout (default '
                             '%(default)s); the layout that runs first '
                             'alternates')
    parser.add_argument('--n-images', type=int, default=4096,
                        help='training faces per run (default %(default)s)')
    parser.add_argument('--epochs', type=int, default=2,
                        help='epochs per run, of which the last is timed '
                             '(default %(default)s)')
    parser.add_argument('--n-score', type=int, default=256,
                        help="faces of train.py's score after each epoch "
                             "(untimed; default %(default)s)")
    for name in ('batch_size', 'image_size', 'conv_dim', 'z_size'):
        parser.add_argument('--' + name.replace('_', '-'), type=int,
                            default=COURSE[name],
                            help='default: the course recipe, %(default)s')
    parser.add_argument('--precision', choices=('auto', 'fp32', 'bf16'),
                        help='number format of both layouts (default: auto, '
                             'chosen once here for this machine and passed '
                             'to every run; fp32 with --quick)')
    parser.add_argument('--quick', action='store_true',
                        help='one round of tiny runs (256 faces at 16x16, '
                             'batch 32, conv_dim 8, z 8, fp32, 32 faces '
                             'scored): checks that everything runs')
    parser.add_argument('--json', type=Path,
                        help='write the figures to this file (the committed '
                             'ones: assets/processes.json)')
    args = parser.parse_args(argv)
    if args.quick:
        args.n_images, args.batch_size, args.rounds = 256, 32, 1
        args.n_score = 32  # untimed, but it adds to every run's wall time
        args.image_size, args.conv_dim, args.z_size = 16, 8, 8
        args.precision = args.precision or 'fp32'
    args.precision = args.precision or 'auto'
    args.processes = len(usable_cpus())
    if args.rounds < 1:
        parser.error(f'--rounds must be at least 1; got {args.rounds}.')
    if args.epochs < 2:
        parser.error(f'--epochs must be at least 2, as the first one '
                     f'includes warm-up; got {args.epochs}.')
    if args.batch_size % args.processes:
        lower = args.batch_size - args.batch_size % args.processes
        parser.error(
            f'--batch-size {args.batch_size} cannot be split evenly across '
            f'the {args.processes} processes of this machine: pass a '
            f'multiple of {args.processes}, e.g. {lower or args.processes}.')
    return args


def run(args):
    """Both measurements; returns the report as a plain dict."""
    data_dir = Path(prepare_data(args.data_dir)).resolve()  # cwd: ROOT
    asked = args.precision
    # One number format for both layouts, chosen once: each run's own
    # 'auto' check could choose differently and measure arithmetic, not
    # layout.
    dtype = choose_precision(torch.device('cpu'), asked)
    args.precision = 'fp32' if dtype is None else 'bf16'
    layout = core_layout(usable_cpus())
    rows, ratio = measure_throughput(args, data_dir)
    cache = measure_cache(data_dir, args.image_size, args.processes)
    return {
        'cpu': cpu_type(), 'torch': torch.__version__,
        'python': platform.python_version(),
        'threads_per_core_layout': layout,
        'settings': {'n_images': args.n_images,
                     'image_size': args.image_size, 'rounds': args.rounds,
                     'batch_size': args.batch_size,
                     'precision': args.precision, 'precision_asked': asked,
                     'epochs': args.epochs, 'n_score': args.n_score,
                     'conv_dim': args.conv_dim, 'z_size': args.z_size,
                     'processes': args.processes, 'quick': args.quick},
        'throughput': rows, 'ratio': ratio, 'cache': cache,
    }


def format_cache(cache):
    """The cache lines of format_table."""
    memory, size = cache['memory'], cache['image_size']
    lines = []
    if memory is None:
        lines += [f"Per-process memory: not measured; "
                  f"{cache['memory_skipped']}."]
    else:
        lines += [
            f"| training faces in {cache['n_processes']} processes | "
            f"private (MB) | Pss (MB) | private added by loading (MB) | "
            f"Pss added by loading (MB) |",
            '|---|---:|---:|---:|---:|']
        labels = {'mapped': 'mapped from the cache (load_faces)',
                  'copied': 'copied into each process'}
        for mode, label in labels.items():
            row = memory[mode]
            lines.append(f"| {label} | {row['private_mb']:,.1f} | "
                         f"{row['pss_mb']:,.1f} | "
                         f"{row['private_added_mb']:,.1f} | "
                         f"{row['pss_added_mb']:,.1f} |")
        lines.append('')
    full = cache['full_celeba']
    lines.append(
        f"Cache file: {cache['file_bytes'] / 2**20:,.1f} MB for "
        f"{cache['images']:,} training faces at {size}x{size}, loaded again "
        f"(files listed, mapped and checksummed) in {cache['load_s']:.2f} "
        f"s. The full "
        f"aligned CelebA at {size}x{size} would take "
        f"{full['bytes'] / 2**20:,.0f} MB ({full['how']}).")
    return lines


def format_table(report):
    """The report as Markdown: the throughput table, the ratio line, the
    memory table and a few lines of context."""
    settings, ratio = report['settings'], report['ratio']
    lines = ['| layout | images/s (median) | per round |',
             '|---|---:|---|']
    for row in report['throughput']:
        rounds = ', '.join(f'{rate:,.0f}' for rate in row['images_per_second'])
        lines.append(f"| {row['name']} | {row['median']:,.0f} | {rounds} |")
    many, one = (row['name'] for row in report['throughput'][::-1])
    spread = (f", range {ratio['min']:.2f}-{ratio['max']:.2f}"
              if ratio['max'] > ratio['min'] else '')
    size = settings['image_size']
    lines += [
        '',
        f"{many} / {one}: **{ratio['median']:.2f}x** (median of "
        f"{len(ratio['per_round'])} per-round ratios{spread}).",
        '',
        f"Measured on {report['cpu']}, "
        f"{describe_layout(report['threads_per_core_layout'])}, torch "
        f"{report['torch']}: train.py on {settings['n_images']:,} faces at "
        f"{size}x{size}, batch {settings['batch_size']} (over all "
        f"processes), {settings['precision']}, images/s of epoch "
        f"{settings['epochs']} of {settings['epochs']} of each run, "
        f"{settings['rounds']} round(s), the layout that runs first "
        f"alternating.",
        '',
        *format_cache(report['cache'])]
    return '\n'.join(lines)


TABLE_START = '<!-- processes table: made from assets/processes.json -->'
TABLE_END = '<!-- end of processes table -->'


def with_table(readme_text, report):
    """readme_text with format_table(report) between the table's marker
    comments (TABLE_START, TABLE_END), which stay."""
    return replace_between(readme_text, TABLE_START, TABLE_END,
                           format_table(report))


def main(argv=None):
    return reporting.report(run, format_table, parse_args(argv))


if __name__ == '__main__':
    main()
