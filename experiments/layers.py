"""Where a training step's time goes: each layer of D and G, forward and
backward, against the matmul peak.

The step is the default path's (the course model, channels_last, the
precision facegen.runtime.choose_precision picks, freed memory kept for
reuse) on random images: content does not change the time. Every leaf module
(each one operation in the course model) is timed by hooks: forward hooks
around its call, and hooks on the autograd node its output came from,
around that node's backward (the gradients of its input and of its
weights). A convolution's or linear layer's FLOPs are counted from its
shapes, call by call: one forward's worth for the forward, and one more for
each gradient its backward computes (its input's, when that needs one; its
weights', unless D is frozen for G's update). What no module covers (the
losses, the optimizers' updates, autograd's bookkeeping) is the rest. The
hooks cost a little time themselves, so the step is also timed without them,
in rounds taken in turn with the hooked ones. On a GPU every clock reading
first waits for the queued kernels, so that each layer's time is its own.

    python -m experiments.layers                           # the table
    python -m experiments.layers --json assets/layers.json  # + figures
    python -m experiments.layers --quick                   # does it run
"""
import argparse
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

import dcgan
from experiments import reporting
from experiments.benchmark import (add_model_arguments, build_models,
                                   check_rounds, matmul_flops_per_s,
                                   synchronize)
from facegen.runtime import (choose_device, choose_precision, cpu_type,
                             keep_freed_memory)

WEIGHTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def forward_flops(module, inputs, output):
    """FLOPs of one forward call of a convolution or linear layer (a
    multiply and an add per weight use); 0 for any other module."""
    if isinstance(module, nn.Conv2d):  # per output element: Cin/g * k * k
        per_out = module.weight[0].numel()
        return 2 * output.numel() * per_out
    if isinstance(module, nn.ConvTranspose2d):  # per input element
        per_in = module.weight[0].numel()
        return 2 * inputs[0].numel() * per_in
    if isinstance(module, nn.Linear):
        return 2 * output.numel() * module.in_features
    return 0


def describe(module, inputs, output):
    """'Conv2d 3→32, 32→16 px' for a layer that changes shape, else the
    module's class and its input's channels."""
    x = inputs[0]  # (N, C, H, W) or (N, F)
    kind = type(module).__name__
    if x.dim() == 4 and output.dim() == 4:
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            return (f'{kind} {x.shape[1]}→{output.shape[1]}, '
                    f'{x.shape[2]}→{output.shape[2]} px')
        return f'{kind}, {x.shape[1]} channels at {x.shape[2]} px'
    return f'{kind} {x.shape[-1]}→{output.shape[-1]}'


class LayerClock:
    """Timing hooks on every leaf module of the networks, while attached:
    seconds and FLOPs per layer and direction, summed over the steps."""

    def __init__(self, networks, device):
        self.device = device
        self.seconds = defaultdict(float)  # (layer, 'forward'|'backward')
        self.flops = defaultdict(int)
        self.kinds = {}
        self._modules = {f'{prefix}.{name}': module
                         for prefix, net in networks.items()
                         for name, module in net.named_modules()
                         if not list(module.children())}
        self._started, self._handles = {}, []

    def attach(self):
        for layer, module in self._modules.items():
            self._handles += self._hooks(layer, module)

    def detach(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hooks(self, layer, module):
        def forward_pre(mod, inputs):
            self._started[layer] = self._now()

        def forward_post(mod, inputs, output):
            self.seconds[layer, 'forward'] += (self._now()
                                               - self._started.pop(layer))
            flops = forward_flops(mod, inputs, output)
            self.flops[layer, 'forward'] += flops
            self.kinds.setdefault(layer, describe(mod, inputs, output))
            if output.grad_fn is not None:  # the module's autograd node
                gradients = inputs[0].requires_grad + (
                    isinstance(mod, WEIGHTED) and mod.weight.requires_grad)
                self._time_backward(layer, output.grad_fn, gradients * flops)

        return [module.register_forward_pre_hook(forward_pre),
                module.register_forward_hook(forward_post)]

    def _time_backward(self, layer, node, flops):
        """Time the backward of one call: the autograd node that made the
        module's output (each leaf module of the course model is one
        operation), from the moment it starts to the moment it has the
        gradients of its input and weights."""
        started = []

        def before(grad_outputs):
            started.append(self._now())

        def after(grad_inputs, grad_outputs):
            self.seconds[layer, 'backward'] += self._now() - started.pop()
            self.flops[layer, 'backward'] += flops

        node.register_prehook(before)
        node.register_hook(after)

    def _now(self):
        """The clock, once the work queued so far has run."""
        synchronize(self.device)
        return time.perf_counter()


def make_step(args, device, amp_dtype):
    """The course model with its optimizers, channels_last, and a function
    that runs one training step on the same random batch."""
    torch.manual_seed(0)
    D, G, d_opt, g_opt = build_models(args, device, channels_last=True)
    images = torch.rand(  # (N, 3, S, S) in [0, 1]
        args.batch_size, 3, args.image_size, args.image_size,
        device=device).contiguous(memory_format=torch.channels_last)

    def step():
        dcgan.train_step(D, G, d_opt, g_opt, images, args.z_size,
                         smooth=True, amp_dtype=amp_dtype)
    return step, {'D': D, 'G': G}


def timed(step, n_steps, device):
    """Seconds per step over n_steps."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / n_steps


def run(args):
    """Time the step with and without the hooks, in alternating rounds; the
    figures as a plain dict."""
    device = choose_device()
    amp_dtype = choose_precision(device, args.precision)
    memory_kept = keep_freed_memory()
    step, networks = make_step(args, device, amp_dtype)
    clock = LayerClock(networks, device)
    for _ in range(args.warmup):
        step()
    per_round = args.steps // args.rounds
    bare, hooked = [], []
    for _ in range(args.rounds):
        bare.append(timed(step, per_round, device))
        clock.attach()
        hooked.append(timed(step, per_round, device))
        clock.detach()
    n_steps = per_round * args.rounds
    layers = []
    for layer, kind in clock.kinds.items():
        row = {'layer': layer, 'kind': kind}
        for direction in ('forward', 'backward'):
            row[direction + '_ms'] = (
                1e3 * clock.seconds[layer, direction] / n_steps)
            row[direction + '_gflop'] = (
                clock.flops[layer, direction] / n_steps / 1e9)
        layers.append(row)
    peak_dtype = amp_dtype or torch.float32
    return {
        'cpu': cpu_type(), 'device': device.type,
        'threads': torch.get_num_threads(), 'torch': torch.__version__,
        'python': platform.python_version(),
        'precision': str(amp_dtype or 'fp32'),
        'freed_memory_kept': memory_kept, 'batch_size': args.batch_size,
        'image_size': args.image_size, 'steps': n_steps,
        'step_ms': 1e3 * statistics.mean(bare),
        'hooked_step_ms': 1e3 * statistics.mean(hooked),
        'matmul_gflop_per_s': matmul_flops_per_s(device, peak_dtype) / 1e9,
        'layers': layers}


def summary(report):
    """Totals read off the layers: ms per step in convolutions and linear
    layers (weighted), in the other layers, and in what no layer covers;
    the weighted layers' GFLOP per step."""
    weighted = [row for row in report['layers']
                if row['forward_gflop'] or row['backward_gflop']]
    ms = {'weighted': sum(row['forward_ms'] + row['backward_ms']
                          for row in weighted)}
    ms['other layers'] = sum(row['forward_ms'] + row['backward_ms']
                             for row in report['layers']) - ms['weighted']
    ms['outside the layers'] = (report['hooked_step_ms'] - ms['weighted']
                                - ms['other layers'])
    gflop = sum(row['forward_gflop'] + row['backward_gflop']
                for row in weighted)
    return ms, gflop


def gflop_per_s(gflop, ms):
    return gflop / ms * 1e3 if ms > 0 else 0.0


def format_table(report):
    """The layers as a Markdown table, slowest first, plus the totals."""
    peak = report['matmul_gflop_per_s']
    lines = ['| layer | forward ms | GFLOP/s | backward ms | GFLOP/s | '
             'share of matmul peak |', '|---|---:|---:|---:|---:|---:|']
    rows = sorted(report['layers'], key=lambda row: -(row['forward_ms']
                                                      + row['backward_ms']))
    for row in rows:
        rates = [gflop_per_s(row[d + '_gflop'], row[d + '_ms'])
                 for d in ('forward', 'backward')]
        both = gflop_per_s(row['forward_gflop'] + row['backward_gflop'],
                           row['forward_ms'] + row['backward_ms'])
        rate_cells = [f'{rate:,.0f}' if rate else '' for rate in rates]
        lines.append(
            f"| {row['layer']}: {row['kind']} | {row['forward_ms']:.2f} | "
            f"{rate_cells[0]} | {row['backward_ms']:.2f} | {rate_cells[1]} | "
            f"{f'{both / peak:.0%}' if both else ''} |")
    ms, gflop = summary(report)
    hooked = report['hooked_step_ms']
    shares = ', '.join(f'{name} {value:.1f} ms ({value / hooked:.0%})'
                       for name, value in ms.items())
    where = (f"{report['cpu']}, {report['threads']} threads"
             if report['device'] == 'cpu' else report['device'])
    lines += [
        '',
        f"Measured on {where}, torch {report['torch']}, "
        f"{report['precision']}, channels_last, batch "
        f"{report['batch_size']} at {report['image_size']} px; per step, "
        f"over {report['steps']} steps. A step takes "
        f"{report['step_ms']:.1f} ms without the hooks and "
        f"{report['hooked_step_ms']:.1f} ms with them: {shares}.",
        f"Convolutions and linear layers: {gflop:.2f} GFLOP per step at "
        f"{gflop_per_s(gflop, ms['weighted']):,.0f} GFLOP/s; the whole step "
        f"at {gflop_per_s(gflop, report['step_ms']):,.0f}; matmul peak "
        f"{peak:,.0f} GFLOP/s."]
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog='python -m experiments.layers',
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=48,
                        help='timed steps with the hooks, and as many '
                             'without them')
    parser.add_argument('--rounds', type=int, default=8,
                        help='the steps are split into this many turns of '
                             'each kind, taken in rotation')
    parser.add_argument('--warmup', type=int, default=5)
    add_model_arguments(parser)
    parser.add_argument('--quick', action='store_true',
                        help='4 steps at batch 16: checks that it runs')
    parser.add_argument('--json', type=Path,
                        help='write the figures to this file (the committed '
                             'ones: assets/layers.json)')
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.warmup, args.batch_size = 4, 2, 1, 16
    check_rounds(parser, args)
    return args


def main(argv=None):
    return reporting.report(run, format_table, parse_args(argv))


if __name__ == '__main__':
    main()
