"""Where and how a run computes: seed, device, number format, memory
allocator, CPU facts.

Chosen once per machine, printed once, overridable by the caller.
"""
import ctypes
import functools
import platform
import random
import time
import warnings

import numpy as np
import torch
from torch import nn

from .settings import COURSE

PRECISIONS = ('auto', 'fp32', 'bf16')
_CPU_BF16_FLAGS = ('amx_bf16', 'avx512_bf16')  # native bf16 on x86
_MIN_BF16_SPEEDUP = 1.15  # a smaller gain is timing noise: keep fp32
# Timed passes per number format in the 'auto' check. With 3, a slow spell
# of a shared AMX CPU once made bf16 look 1.13x as fast as fp32, where later
# checks and the benchmark measured 1.6x to 2.1x; 5 take about 0.6 s there.
_PRECISION_ROUNDS = 5
_CPUINFO = '/proc/cpuinfo'
# glibc's mallopt settings (malloc.h) and the values keep_freed_memory sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_BELOW_BYTES = 32 * 2**20  # blocks this size or smaller: from the heap
_KEEP_FREE_BYTES = 256 * 2**20  # free heap kept before any goes back


def seed_everything(seed):
    """Seed Python, NumPy and torch (CPU and every GPU) so a run repeats."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)  # done by manual_seed; explicit here
    print(f'Random seed: {seed}')


def choose_device():
    """The first CUDA GPU when there is one, else the CPU; says which."""
    if torch.cuda.is_available():
        device = torch.device('cuda')
        print(f'Using device: cuda ({torch.cuda.get_device_name(device)})')
    else:
        device = torch.device('cpu')
        print('Using device: cpu (no CUDA GPU found; full training will be '
              'slow)')
    return device


def _glibc():
    """The C library as a ctypes handle where it is glibc, else None."""
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return None  # macOS, Windows and musl have no glibc mallopt
    try:
        return ctypes.CDLL('libc.so.6')
    except OSError:
        return None


def can_keep_freed_memory():
    """True where keep_freed_memory has settings to change (glibc)."""
    return _glibc() is not None


def keep_freed_memory():
    """Let glibc's malloc keep the memory a training step frees, for the
    next step to reuse; True when set, False where that is not possible.

    A step allocates and frees the same activations and gradients, a few
    MB each. glibc's defaults hand many of those blocks back to the
    operating system and take them again on the next step, which pays
    one page fault per 4 KiB touched: 3,000 to 6,000 faults per step of
    the course model on a 2-core CPU, up to a tenth of its time. Here
    blocks up to 32 MiB come from the process's heap, and up to 256 MiB of
    freed heap stays with the process; numbers do not change, only where
    memory comes from. Only glibc (Linux) has these settings; elsewhere
    nothing changes and this returns False. Prints what it did.
    """
    libc = _glibc()
    if libc is None:
        print("Memory: the system allocator's defaults (not glibc)")
        return False
    done = all(libc.mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, _HEAP_BELOW_BYTES),
        (_M_TRIM_THRESHOLD, _KEEP_FREE_BYTES)))
    print('Memory: ' + ('freed blocks kept for reuse (glibc malloc)' if done
                        else "glibc's defaults (it refused the settings)"))
    return done


def count_parameters(model):
    """Number of trainable parameters (requires_grad) in model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _cpuinfo_field(name):
    """The first value of a field in /proc/cpuinfo (Linux), or None."""
    try:
        with open(_CPUINFO) as f:
            for line in f:
                field, _, value = line.partition(':')
                if field.strip() == name:
                    return value.strip()
    except OSError:  # not Linux
        pass
    return None


def _cpu_flags():
    """The CPU's feature flags (e.g. 'avx2', 'avx512_bf16'); may be empty."""
    return set((_cpuinfo_field('flags') or '').split())


def cpu_name():
    """The CPU's model name, e.g. 'AMD EPYC 7R13 Processor'."""
    return _cpuinfo_field('model name') or platform.processor() or \
        'unknown CPU'


def cpu_type():
    """The CPU's name and widest vector unit, e.g. 'AMD EPYC (AVX2)', so
    that every measured figure says what it was measured on."""
    flags = _cpu_flags()
    units = [('amx_bf16', 'AMX'), ('avx512_bf16', 'AVX-512 with bf16'),
             ('avx512f', 'AVX-512'), ('avx2', 'AVX2')]
    unit = next((label for flag, label in units if flag in flags),
                platform.machine() or 'unknown')
    return f'{cpu_name()} ({unit})'


def _cpu_has_bf16():
    """True when the CPU computes in bf16 natively rather than emulating."""
    return bool(_cpu_flags() & set(_CPU_BF16_FLAGS))


def _cuda_has_fast_bf16(device):
    """True on Ampere or newer GPUs, whose tensor cores run bf16 fast."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8 and torch.cuda.is_bf16_supported()


def _timing_block(conv, in_channels, out_channels):
    """A strided conv (or transposed conv), batch norm and ReLU."""
    return nn.Sequential(conv(in_channels, out_channels, 4, 2, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


def _timing_network():
    """The course networks' strided convolutions at the course's width,
    D's down to 4x4 and G's back up, in channels_last."""
    c, size = COURSE['conv_dim'], COURSE['image_size']
    widths = [3, c, 2 * c, 4 * c]  # 32 -> 16 -> 8 -> 4 pixels
    down = [_timing_block(nn.Conv2d, a, b)
            for a, b in zip(widths, widths[1:])]
    up = [_timing_block(nn.ConvTranspose2d, a, b)
          for a, b in zip(widths[:0:-1], widths[-2:0:-1])]
    layers = nn.Sequential(*down, *up,
                           nn.ConvTranspose2d(c, 3, 4, 2, 1))  # (N, 3, S, S)
    return layers.to(memory_format=torch.channels_last), size


def _time_conv_workload(dtype, batch_size=COURSE['batch_size'], repeats=3):
    """Seconds for one forward and backward pass through the timing network
    on the CPU: the best of `repeats` after one warm-up pass, under bf16
    autocast when dtype is torch.bfloat16."""
    # A private random stream: timing must not shift the seeded run.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layers, size = _timing_network()
        images = torch.randn(batch_size, 3, size, size).to(
            memory_format=torch.channels_last)  # (N, 3, S, S)
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast('cpu', dtype=torch.bfloat16,
                            enabled=dtype == torch.bfloat16):
            loss = layers(images).float().square().mean()
        loss.backward()
        seconds.append(time.perf_counter() - start)
    return min(seconds[1:])  # the first pass includes oneDNN's set-up


def _auto_cpu_precision():
    """(dtype, reason) for 'auto' on the CPU: bf16 only where it measures
    clearly faster."""
    if not _cpu_has_bf16():
        return None, 'this CPU has no native bf16: bf16 would be slower'
    # The formats take turns, so a slow spell of a shared CPU hits both
    # alike; the fastest pass of each is compared.
    seconds = {torch.float32: [], torch.bfloat16: []}
    for _ in range(_PRECISION_ROUNDS):
        for dtype, times in seconds.items():
            times.append(_time_conv_workload(dtype, repeats=1))
    speedup = min(seconds[torch.float32]) / min(seconds[torch.bfloat16])
    if speedup >= _MIN_BF16_SPEEDUP:
        return torch.bfloat16, (f'{speedup:.1f}x faster than fp32 in a '
                                f'quick check on this CPU')
    return None, (f'bf16 was only {speedup:.2f}x as fast as fp32 in a quick '
                  f'check on this CPU; {_MIN_BF16_SPEEDUP}x is needed to '
                  f'give up fp32 precision')


def _auto_cuda_precision(device):
    """(dtype, reason) for 'auto' on a GPU: bf16 from Ampere on."""
    name = torch.cuda.get_device_name(device)
    if _cuda_has_fast_bf16(device):
        return torch.bfloat16, f'{name} has bf16 tensor cores'
    return None, f'{name} is older than Ampere, without fast bf16'


def _warn_if_slow_bf16(device):
    """Warn when bf16 was asked for on hardware that only emulates it."""
    if device.type == 'cpu' and not _cpu_has_bf16():
        hardware = (f'This CPU ({cpu_name()}) has neither '
                    f'{" nor ".join(_CPU_BF16_FLAGS)}')
    elif device.type == 'cuda' and not _cuda_has_fast_bf16(device):
        hardware = f'{torch.cuda.get_device_name(device)} is older than Ampere'
    else:
        return
    warnings.warn(f'{hardware}, so bf16 is emulated and will be slower than '
                  f"fp32. Use precision='auto' or 'fp32'.", stacklevel=3)


def choose_precision(device, precision='auto'):
    """The autocast dtype for the training forward passes, or None for fp32.

    precision is 'auto' (bf16 where the hardware runs it fast: Ampere+
    GPUs, and CPUs with native bf16 where a quick timing confirms it),
    'fp32' or 'bf16'. On a GPU this also turns on cudnn.benchmark, as
    DCGAN's input shapes never change. Prints the choice.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(
            f'precision must be one of {", ".join(map(repr, PRECISIONS))}; '
            f'got {precision!r}.')
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # fixed shapes: tune once
    if precision == 'fp32':
        dtype, reason = None, 'as requested'
    elif precision == 'bf16':
        _warn_if_slow_bf16(device)
        dtype, reason = torch.bfloat16, 'as requested'
    elif device.type == 'cuda':
        dtype, reason = _auto_cuda_precision(device)
    elif device.type == 'cpu':
        dtype, reason = _auto_cpu_precision()
    else:
        dtype, reason = None, f'no bf16 check for {device.type} devices'
    print(f'Precision: {"fp32" if dtype is None else "bf16 autocast"} '
          f'({reason})')
    return dtype


def precision_label(amp_dtype):
    """How a run's JSON names its number format: 'fp32', or bf16 autocast
    with the generator's output layer in fp32 (output_layer_in_fp32)."""
    return 'fp32' if amp_dtype is None else 'bf16 autocast, G output fp32'


class _Float32Forward:
    """Mixin for a layer that computes outside autocast: float32 inputs,
    float32 weights, float32 output, while the layers around it stay in
    autocast's dtype. Outside autocast it changes nothing."""

    def forward(self, x, *args, **kwargs):
        """The layer's own forward, on x in float32, autocast off."""
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float(), *args, **kwargs)


class Float32Conv2d(_Float32Forward, nn.Conv2d):
    """nn.Conv2d that computes in float32 under autocast."""


class Float32ConvTranspose2d(_Float32Forward, nn.ConvTranspose2d):
    """nn.ConvTranspose2d that computes in float32 under autocast."""


class Float32Linear(_Float32Forward, nn.Linear):
    """nn.Linear that computes in float32 under autocast."""


_FLOAT32_LAYERS = {nn.Conv2d: Float32Conv2d,
                   nn.ConvTranspose2d: Float32ConvTranspose2d,
                   nn.Linear: Float32Linear}


@functools.cache  # one class per layer class, however many generators
def _float32_class(cls):
    """The float32 version of a layer class: one of the three above, or
    made here for a subclass of theirs (its own forward kept)."""
    if issubclass(cls, _Float32Forward):
        return cls
    return _FLOAT32_LAYERS.get(cls) or type(
        f'Float32{cls.__name__}', (_Float32Forward, cls),
        {'__doc__': f'{cls.__name__} computing in float32 under autocast.'})


def output_layer_in_fp32(G):
    """Make the layer that draws G's pixels compute in float32 even under
    bf16 autocast; returns G. That layer is the last convolution or linear
    layer among G's modules (the order they were created in); it becomes
    its Float32 version (print(G) shows it), and the layers before it keep
    autocast's speed. Its weights and state_dict keys stay as they were, so
    saved generators load as before, and torch.compile traces it.

    Why: bf16 holds values in [0.5, 1) only 1/128 apart, about one pixel
    step. With every layer in bf16 the faces came out slightly too bright,
    and three seeds ended clearly further from the real-vs-real floor than
    in fp32; with this one layer in fp32 they ended as close as in fp32,
    and most of bf16's speed stayed (TRAINING.md has the runs). In fp32
    runs nothing changes.
    """
    layers = [module for module in G.modules()
              if isinstance(module, tuple(_FLOAT32_LAYERS))]
    if not layers:
        raise ValueError(
            f'{type(G).__name__} has no convolution or linear layer to run '
            f'in float32: is it the generator?')
    layers[-1].__class__ = _float32_class(type(layers[-1]))
    return G
