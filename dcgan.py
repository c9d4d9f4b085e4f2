# Generated from dlnd_face_generation.ipynb by export.py: do not edit.
# Change the notebook cells that start with "#| export", then run
# `python export.py`.
import math

import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

import helpers  # every tool that is not an exercise: one page


class FaceDataset(Dataset):
    """Decoded faces (uint8) served as (float image in [0, 1], label 0)."""

    def __init__(self, images):
        """Keep images, a uint8 tensor (N, 3, S, S) with values 0-255."""
        self.images = images  # uint8 (N, 3, S, S)

    def __len__(self):
        """The number of images."""
        return len(self.images)

    def __getitem__(self, index):
        """Image index as floats (3, S, S) in [0, 1], and the label 0."""
        return self.images[index].float() / 255, 0  # (3, S, S) in [0, 1]


def get_dataloader(batch_size, image_size, data_dir='processed_celeba_small/',
                   n_images=None):
    """Shuffled batches of (images, labels) from the training faces under
    data_dir (never the held-out ones); images are floats in [0, 1] of shape
    (batch_size, 3, image_size, image_size). n_images: only the first
    n_images training faces (None: all)."""
    # split='train': the 2,600 held-out faces stay unseen, for the quality score
    images = helpers.load_faces(data_dir, image_size, n_images,
                                split='train')  # (N, 3, S, S) uint8
    # drop_last: every step sees a full batch, so batch-norm statistics never
    # come from a handful of images. Pinned memory speeds up copies to a GPU.
    return DataLoader(FaceDataset(images), batch_size=batch_size,
                      shuffle=True, drop_last=True,
                      pin_memory=torch.cuda.is_available())


def scale(x, feature_range=(-1, 1)):
    """Map x linearly from [0, 1] onto feature_range."""
    low, high = feature_range
    return x * (high - low) + low


def n_resolution_steps(image_size):
    """How many 2x steps lie between a 4x4 feature map and image_size."""
    steps = math.log2(image_size) - 2 if image_size > 0 else -1
    if steps < 1 or not steps.is_integer():
        raise ValueError(
            f'image_size must be a power of two of at least 8 (8, 16, 32, '
            f'64, ...); got {image_size}.')
    return int(steps)


def conv_block(in_channels, out_channels, batch_norm=True):
    """Halve width and height: strided conv, optional batch norm, leaky ReLU."""
    layers = [nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1,
                        bias=not batch_norm)]  # batch norm has its own shift
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class Discriminator(nn.Module):
    """Images (N, 3, S, S) in [-1, 1] -> one real/fake logit each, (N, 1)."""

    def __init__(self, conv_dim, image_size=32):
        """The layers for image_size x image_size images: strided
        convolutions from conv_dim channels, doubling, down to 4x4, then one
        linear layer to a single logit."""
        super().__init__()
        steps = n_resolution_steps(image_size)
        blocks = [conv_block(3, conv_dim, batch_norm=False)]
        for i in range(1, steps):
            blocks.append(conv_block(conv_dim * 2 ** (i - 1),
                                     conv_dim * 2 ** i))
        # S=32: (N, conv_dim, 16, 16) -> (N, conv_dim*2, 8, 8)
        #       -> (N, conv_dim*4, 4, 4)
        self.features = nn.Sequential(*blocks)
        self.classify = nn.Linear(conv_dim * 2 ** (steps - 1) * 4 * 4, 1)

    def forward(self, x):
        """x (N, 3, S, S) -> logits (N, 1)."""
        x = self.features(x).flatten(1)  # (N, conv_dim*4 * 4*4) for S=32
        return self.classify(x)  # (N, 1) logits


def deconv_block(in_channels, out_channels):
    """Double width and height: transposed conv, batch norm, ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1,
                           bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class Generator(nn.Module):
    """Latent vectors (N, z_size) -> images (N, 3, S, S) in [-1, 1]."""

    def __init__(self, z_size, conv_dim, image_size=32):
        """The layers for image_size x image_size images: a linear layer to
        a 4x4 feature map, transposed convolutions halving the channels down
        to conv_dim, then one to 3 channels and tanh."""
        super().__init__()
        steps = n_resolution_steps(image_size)
        self.top_channels = conv_dim * 2 ** (steps - 1)
        self.project = nn.Linear(z_size, self.top_channels * 4 * 4,
                                 bias=False)
        blocks = [nn.BatchNorm2d(self.top_channels), nn.ReLU()]
        for i in range(steps - 1, 0, -1):
            blocks.append(deconv_block(conv_dim * 2 ** i,
                                       conv_dim * 2 ** (i - 1)))
        # S=32: (N, conv_dim*4, 4, 4) -> (N, conv_dim*2, 8, 8)
        #       -> (N, conv_dim, 16, 16)
        blocks += [nn.ConvTranspose2d(conv_dim, 3, 4, stride=2, padding=1),
                   nn.Tanh()]  # (N, 3, S, S) in [-1, 1]
        self.upsample = nn.Sequential(*blocks)

    def forward(self, z):
        """z (N, z_size) -> images (N, 3, S, S) in [-1, 1]."""
        x = self.project(z)  # (N, conv_dim*4 * 4*4) for S=32
        x = x.view(-1, self.top_channels, 4, 4)  # (N, conv_dim*4, 4, 4)
        return self.upsample(x)  # (N, 3, S, S)


def weights_init_normal(m):
    """DCGAN init: conv and linear weights ~ N(0, 0.02), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build_networks(z_size, conv_dim, image_size, device):
    """D and G, initialised with weights_init_normal, on device in
    channels_last; G's output layer computes in fp32 under autocast."""
    D = Discriminator(conv_dim, image_size)
    G = Generator(z_size, conv_dim, image_size)
    for net in (D, G):
        net.apply(weights_init_normal)
        net.to(device, memory_format=torch.channels_last)
    helpers.output_layer_in_fp32(G)  # in bf16 runs: the pixels in fp32
    return D, G


SMOOTH_REAL_LABEL = 0.9  # target for real images when smoothing is on


def real_loss(D_out, smooth=False):
    """Mean BCE of logits D_out against 'real' (1, or 0.9 when smooth)."""
    target = torch.full_like(D_out, SMOOTH_REAL_LABEL if smooth else 1.0)
    return F.binary_cross_entropy_with_logits(D_out, target)


def fake_loss(D_out):
    """Mean BCE of logits D_out against 'fake' (0)."""
    return F.binary_cross_entropy_with_logits(D_out, torch.zeros_like(D_out))


def build_optimizers(D, G, lr, betas):
    """One Adam optimizer per network, with the same settings; returns
    (d_optimizer, g_optimizer)."""
    d_optimizer = optim.Adam(D.parameters(), lr=lr, betas=betas)
    g_optimizer = optim.Adam(G.parameters(), lr=lr, betas=betas)
    return d_optimizer, g_optimizer


def train_step(D, G, d_optimizer, g_optimizer, real_images, z_size,
               smooth=False, amp_dtype=None):
    """One D update, then one G update on real_images (N, 3, S, S) in
    [0, 1]; returns the two losses as Python floats (d_loss, g_loss). With
    amp_dtype (e.g. torch.bfloat16) the forward passes run under autocast."""
    device = real_images.device

    def forward():  # mixed precision for forward passes and losses only
        return torch.autocast(device.type, dtype=amp_dtype,
                              enabled=amp_dtype is not None)

    real_images = scale(real_images)  # (N, 3, S, S) in [-1, 1]
    z = torch.randn(real_images.size(0), z_size, device=device)
    # Discriminator: real -> 1, fake -> 0; detach() keeps G out of this step.
    with forward():
        fake_images = G(z)  # (N, 3, S, S)
        d_loss = (real_loss(D(real_images), smooth)
                  + fake_loss(D(fake_images.detach())))
    d_optimizer.zero_grad()
    d_loss.backward()
    d_optimizer.step()

    # Generator: make the updated D call its fakes real. D is frozen meanwhile:
    # the gradient flows through D to G, but D's own weights need none.
    D.requires_grad_(False)
    try:
        with forward():
            g_loss = real_loss(D(fake_images))
        g_optimizer.zero_grad()
        g_loss.backward()
        g_optimizer.step()
    finally:
        D.requires_grad_(True)
    return d_loss.item(), g_loss.item()


def train_epoch(D, G, d_optimizer, g_optimizer, loader, config, device,
                amp_dtype=None, desc='epoch', after_step=(), step=None):
    """One pass over loader; returns this epoch's per-batch D and G losses.
    after_step: functions called after every step (the learning-rate
    schedules, the update of the weight average). step: what trains on one
    batch (None: train_step; train.py passes one that also averages the
    losses over its processes). The losses are shown on a progress bar where
    it can redraw in place, and printed as lines elsewhere (a log file)."""
    step = step or train_step
    live = helpers.live_progress()
    d_losses, g_losses = [], []
    batches = tqdm(loader, desc=desc, leave=False, disable=not live)
    for batch, (real_images, _) in enumerate(batches, 1):
        real_images = real_images.to(  # (N, 3, S, S) in [0, 1]
            device, memory_format=torch.channels_last, non_blocking=True)
        d_loss, g_loss = step(D, G, d_optimizer, g_optimizer, real_images,
                              config['z_size'], config['smooth'], amp_dtype)
        if not math.isfinite(d_loss + g_loss):
            raise FloatingPointError(
                f'Training diverged in {desc}, batch {batch}: D loss '
                f'{d_loss}, G loss {g_loss}.')
        d_losses.append(d_loss)
        g_losses.append(g_loss)
        for update in after_step:
            update()
        if (batch - 1) % config['print_every'] == 0:
            if live:
                batches.set_postfix(d_loss=f'{d_loss:.3f}',
                                    g_loss=f'{g_loss:.3f}')
            else:
                print(f'{desc}, batch {batch}/{len(loader)}: D loss '
                      f'{d_loss:.3f}, G loss {g_loss:.3f}', flush=True)
    return d_losses, g_losses


def train(D, G, d_optimizer, g_optimizer, loader, fixed_z, config,
          run_dir='run', amp_dtype=None, score=None):
    """Train until config['n_epochs'] epochs are done, going on from the
    checkpoint in run_dir if an earlier run left one. score, if given, maps G
    to a number after every epoch (lower is better). Returns the per-batch
    losses, the fixed-z samples and the score of every epoch, and the
    generator to keep (the average of G's weights when config['ema_decay'] is
    set), with its batch-norm statistics re-estimated."""
    run = helpers.TrainingRun(run_dir, config, D, G, d_optimizer,
                              g_optimizer, loader, fixed_z)  # resumes
    for epoch in run.epochs_left():
        with run.epoch(epoch):  # an interrupt or a NaN says what is saved
            d_losses, g_losses = train_epoch(
                D, G, d_optimizer, g_optimizer, loader, config, run.device,
                amp_dtype, run.describe(epoch), run.after_step)
        # losses kept, the kept generator scored and drawn, checkpoint written
        run.end_epoch(epoch, d_losses, g_losses, score)
    return run.losses, run.samples, run.scores, run.kept_generator()
