"""Everything the notebook needs that is not an exercise, on one page.

Each tool lives in a module of the facegen/ package with one job; this
page gathers the ones the notebook calls, in the order it calls them.
Read a tool's docstring with help(helpers.NAME), or its module for more.
Nothing here imports the notebook or its exercise code (dcgan.py).
"""
# Set-up: the environment's switches, a seed, the device, the number
# format, the memory allocator
from facegen.settings import check_config, live_progress, quick_mode
from facegen.runtime import (choose_device, choose_precision,
                             count_parameters, cpu_name, cpu_type,
                             keep_freed_memory, output_layer_in_fp32,
                             seed_everything)

# Data: fetch the faces, decode them once into a cached uint8 tensor, and
# keep 2,600 of them aside (held out) for the score
from facegen.fetch import count_images, prepare_data
from facegen.faces import (HELD_OUT_SIZE, is_training_file, load_faces,
                           metrics_cache_dir, split_files)

# The training run: checkpoint, resume, schedule, weight average, interrupt
# and divergence, and the generator it keeps
from facegen.files import CheckpointError, load_checkpoint, save_checkpoint
from facegen.run import (TrainingRun, kept_generator, load_generator,
                         save_generator)

# Pictures: image grids, loss and score curves, samples over epochs, GIF
from facegen.plots import (plot_losses, plot_scores, samples_over_epochs,
                           save_image_grid, save_samples_gif, show_gif,
                           show_images, show_nearest_pairs)

# Sampling: faces from seeded noise, batch-norm statistics re-estimated
from facegen.sampling import (generate, latent_path, recalibrate_batch_norm,
                              sample_faces, seeded_z, to_uint8)

# The score: SWD against held-out faces, its floor, memorisation
from facegen.metrics import nearest_pairs
from facegen.score import describe, epoch_scorer, full_report, real_floor

# The explorer: walk from one seed's face to another's
from facegen.explorer import explore, interpolation_grid

# The run's figures, kept as JSON for the README
from facegen.report import results_table, run_figures, write_figures

__all__ = [
    'check_config', 'live_progress', 'quick_mode', 'choose_device',
    'choose_precision', 'count_parameters', 'cpu_name', 'cpu_type',
    'keep_freed_memory', 'output_layer_in_fp32', 'seed_everything',
    'prepare_data', 'HELD_OUT_SIZE', 'count_images', 'is_training_file',
    'load_faces', 'metrics_cache_dir', 'split_files', 'CheckpointError',
    'load_checkpoint', 'save_checkpoint', 'TrainingRun', 'kept_generator',
    'load_generator', 'save_generator', 'plot_losses', 'plot_scores',
    'samples_over_epochs', 'save_image_grid', 'save_samples_gif', 'show_gif',
    'show_images', 'show_nearest_pairs', 'generate', 'latent_path',
    'recalibrate_batch_norm', 'sample_faces', 'seeded_z', 'to_uint8',
    'nearest_pairs', 'describe', 'epoch_scorer', 'full_report', 'real_floor',
    'explore', 'interpolation_grid', 'results_table', 'run_figures',
    'write_figures',
]
