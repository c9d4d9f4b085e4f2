"""What an epoch costs at larger scales: FLOPs counted, speed measured.

For each scale (image size, conv_dim) the script counts the FLOPs of one
full training step (both networks, forward and backward: FlopCounterMode,
as benchmark.py does), times a few steps of it on this machine, and works
out the time of one epoch over the course's training faces and over the
full aligned CelebA. It then gives what an epoch of the largest scale would
take on a GPU that sustains --gpu-tflops (an assumption, stated as one:
nothing here measures a GPU).

Run from the project root (see experiments/README.md):

    python -m experiments.scale                      # the table; 2 minutes
    python -m experiments.scale --json assets/scale.json  # + the figures
    python -m experiments.scale --quick              # does it run (CI)
"""
import argparse
import platform
import time
from pathlib import Path

import torch

import dcgan
from experiments import reporting
from experiments.benchmark import (build_models, matmul_flops_per_s,
                                   synchronize, train_flops_per_image)
from facegen.faces import HELD_OUT_SIZE
from facegen.runtime import (choose_device, choose_precision, cpu_type,
                             precision_label)
from facegen.settings import COURSE

COURSE_TRAINING_FACES = 32_600 - HELD_OUT_SIZE  # the notebook's epoch
CELEBA_TRAINING_FACES = 202_599 - HELD_OUT_SIZE  # img_align_celeba, all
# (image size, conv_dim): the notebook, its 64 px run, the PyTorch tutorial
SCALES = ((32, 32), (64, 32), (64, 64))


def time_steps(args, image_size, conv_dim, device, amp_dtype):
    """Images per second of full training steps of the notebook's networks
    at this scale, on random images (data loading left out: the decoded,
    mapped cache serves a batch in well under a millisecond)."""
    scale = argparse.Namespace(z_size=args.z_size, conv_dim=conv_dim,
                               image_size=image_size)
    torch.manual_seed(0)
    D, G, d_opt, g_opt = build_models(scale, device, channels_last=True)
    images = torch.rand(args.batch_size, 3, image_size, image_size,
                        device=device).to(memory_format=torch.channels_last)

    def step():
        dcgan.train_step(D, G, d_opt, g_opt, images, args.z_size,
                         amp_dtype=amp_dtype)
    step()  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def measure(args, image_size, conv_dim, device, amp_dtype):
    """One row: the scale, its FLOPs per image and epoch, and its measured
    speed here."""
    scale = argparse.Namespace(z_size=args.z_size, conv_dim=conv_dim,
                               image_size=image_size, batch_size=8)
    flops = train_flops_per_image(scale, device)  # linear in the batch
    img_per_s = time_steps(args, image_size, conv_dim, device, amp_dtype)
    return {
        'image_size': image_size, 'conv_dim': conv_dim,
        'mflop_per_image': flops / 1e6, 'img_per_s': img_per_s,
        'gflop_per_s': flops * img_per_s / 1e9,
        'course_epoch_tflop': flops * COURSE_TRAINING_FACES / 1e12,
        'celeba_epoch_tflop': flops * CELEBA_TRAINING_FACES / 1e12,
        'course_epoch_s': COURSE_TRAINING_FACES / img_per_s,
        'celeba_epoch_s': CELEBA_TRAINING_FACES / img_per_s,
    }


def run(args):
    """Every scale's row and the GPU estimate, as a plain dict."""
    device = choose_device()
    amp_dtype = choose_precision(device, args.precision)
    scales = SCALES[:1] if args.quick else SCALES
    rows = [measure(args, size, conv_dim, device, amp_dtype)
            for size, conv_dim in scales]
    largest = rows[-1]
    peak = matmul_flops_per_s(device, amp_dtype or torch.float32)
    gpu_flops = args.gpu_tflops * 1e12
    return {
        'machine': (torch.cuda.get_device_name(device)
                    if device.type == 'cuda' else cpu_type()),
        'threads': torch.get_num_threads(),
        'precision': precision_label(amp_dtype),
        'torch': torch.__version__, 'python': platform.python_version(),
        'batch_size': args.batch_size, 'steps': args.steps,
        'quick': args.quick,
        'course_training_faces': COURSE_TRAINING_FACES,
        'celeba_training_faces': CELEBA_TRAINING_FACES,
        'matmul_gflop_per_s': peak / 1e9,
        'gpu_tflop_per_s_assumed': args.gpu_tflops,
        'gpu_celeba_epoch_s': largest['celeba_epoch_tflop'] * 1e12 / gpu_flops,
        'rows': rows,
    }


def _duration(seconds):
    """'4.2 s', '42 s', '2.4 min', '13 min' or '2.5 h'."""
    if seconds < 10:
        return f'{seconds:.1f} s'
    if seconds < 100:
        return f'{seconds:.0f} s'
    if seconds < 600:
        return f'{seconds / 60:.1f} min'
    if seconds < 6000:
        return f'{seconds / 60:.0f} min'
    return f'{seconds / 3600:.1f} h'


def format_table(report):
    """The report as a Markdown table plus the lines that say where and how
    it was measured."""
    lines = ['| faces, conv_dim | MFLOP per image | images/s here | '
             'GFLOP/s here | course epoch (30,000 faces) | full CelebA '
             'epoch (TFLOP, time here) |',
             '|---|---:|---:|---:|---:|---:|']
    for row in report['rows']:
        size = row['image_size']
        lines.append(
            f"| {size}×{size}, {row['conv_dim']} | "
            f"{row['mflop_per_image']:,.0f} | {row['img_per_s']:,.0f} | "
            f"{row['gflop_per_s']:,.0f} | {_duration(row['course_epoch_s'])}"
            f" | {row['celeba_epoch_tflop']:,.0f}, "
            f"{_duration(row['celeba_epoch_s'])} |")
    largest = report['rows'][-1]
    lines += [
        '',
        f"Measured on {report['machine']}, {report['threads']} thread(s), "
        f"{report['precision']}, torch {report['torch']}: {report['steps']} "
        f"steps of batch {report['batch_size']} per row after one warm-up "
        f"(matmul peak {report['matmul_gflop_per_s']:,.0f} GFLOP/s). A GPU "
        f"that sustains {report['gpu_tflop_per_s_assumed']:g} TFLOP/s (an "
        f"assumption) would train one full-CelebA epoch at "
        f"{largest['image_size']}×{largest['image_size']}, conv_dim "
        f"{largest['conv_dim']} in about "
        f"{_duration(report['gpu_celeba_epoch_s'])}."]
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog='python -m experiments.scale',
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--batch-size', type=int,
                        default=COURSE['batch_size'],
                        help='images per timed step (default %(default)s)')
    parser.add_argument('--z-size', type=int, default=COURSE['z_size'],
                        help='size of the latent vectors (default '
                             '%(default)s)')
    parser.add_argument('--steps', type=int, default=4,
                        help='timed steps per scale (default %(default)s)')
    parser.add_argument('--precision', default='auto',
                        choices=('auto', 'fp32', 'bf16'),
                        help='default: chosen for this machine')
    parser.add_argument('--gpu-tflops', type=float, default=50.0,
                        help='the TFLOP/s a GPU is assumed to sustain on '
                             'these networks, for the estimate (default '
                             '%(default)s)')
    parser.add_argument('--quick', action='store_true',
                        help='the 32 px scale only, 1 step of batch 16')
    parser.add_argument('--json', type=Path,
                        help='write the figures to this file (the committed '
                             'ones: assets/scale.json)')
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size = 1, 16
    for name in ('batch_size', 'z_size', 'steps'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    if args.gpu_tflops <= 0:
        parser.error('--gpu-tflops must be above 0')
    return args


def main(argv=None):
    return reporting.report(run, format_table, parse_args(argv))


if __name__ == '__main__':
    main()
