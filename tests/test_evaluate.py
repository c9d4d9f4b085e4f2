"""The quality score end to end: the held-out split, the published generator,
evaluate.py on known cases, the metric registry and the result pictures."""

import copy
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import matplotlib

matplotlib.use('Agg')

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import dcgan  # noqa: E402
import evaluate  # noqa: E402
import helpers  # noqa: E402
from facegen import metrics, run, score  # noqa: E402
from facegen.faces import (held_out_count, held_out_fingerprint,  # noqa: E402
                           list_faces)
from test_metrics import blurred, smooth_images  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL_G = dict(z_size=8, conv_dim=4, image_size=16)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    matplotlib.pyplot.close('all')


# --- the held-out split -------------------------------------------------------

NAMES = [f'celeba/{i:06d}.jpg' for i in range(1000)]


def test_split_is_disjoint_complete_and_sized():
    train = helpers.split_files(NAMES, 'train')
    held_out = helpers.split_files(NAMES, 'held_out')
    assert len(held_out) == held_out_count(len(NAMES)) == 100
    assert not set(train) & set(held_out)
    assert sorted(train + held_out) == NAMES
    assert train == sorted(train) and held_out == sorted(held_out)
    assert helpers.split_files(NAMES, 'all') == NAMES


def test_split_depends_on_names_not_on_order():
    shuffled = NAMES[::-1]
    assert (
        sorted(helpers.split_files(shuffled, 'held_out'))
        == helpers.split_files(NAMES, 'held_out')
    )


def test_split_is_spread_over_the_data():
    """A random-looking pick, not the first or last names."""
    held_out = [
        int(name[7:13]) for name in helpers.split_files(NAMES, 'held_out')
    ]
    assert min(held_out) < 100 and max(held_out) > 900


def test_course_data_holds_out_2600():
    assert held_out_count(32_600) == 2600
    assert held_out_count(9) == 0


def test_split_rejects_unknown_names():
    with pytest.raises(ValueError, match='split must be one of'):
        helpers.split_files(NAMES, 'test')


def test_load_faces_splits(face_folder, tmp_path):
    cache = tmp_path / 'cache'
    every = helpers.load_faces(face_folder, 16, cache_dir=cache)
    train = helpers.load_faces(face_folder, 16, cache_dir=cache, split='train')
    held_out = helpers.load_faces(
        face_folder, 16, cache_dir=cache, split='held_out'
    )
    assert (len(every), len(train), len(held_out)) == (40, 36, 4)
    rows = {tuple(image.flatten().tolist()) for image in every}
    assert {
        tuple(image.flatten().tolist())
        for image in torch.cat([train, held_out])
    } == rows
    assert not (
        {tuple(image.flatten().tolist()) for image in train}
        & {tuple(image.flatten().tolist()) for image in held_out}
    )


def test_get_dataloader_trains_on_the_training_split_only(face_folder):
    loader = dcgan.get_dataloader(4, 16, data_dir=str(face_folder))
    assert len(loader.dataset) == 36


def test_imagefolder_with_is_training_file_serves_the_training_split(
        face_folder):
    from torchvision import datasets, transforms
    dataset = datasets.ImageFolder(
        str(face_folder), transform=transforms.ToTensor(),
        is_valid_file=helpers.is_training_file(face_folder))
    names = sorted(os.path.relpath(path, face_folder)
                   for path, _ in dataset.samples)
    every = sorted(p.relative_to(face_folder).as_posix()
                   for p in face_folder.rglob('*.jpg'))
    train = helpers.split_files(every, 'train')
    assert len(names) == 36 and names == train


def test_held_out_split_of_a_tiny_folder_is_refused(tmp_path):
    from conftest import write_jpegs

    write_jpegs(tmp_path / 'tiny' / 'faces', 5)
    with pytest.raises(ValueError, match='at least 10 images'):
        helpers.load_faces(
            tmp_path / 'tiny', 16, cache_dir=tmp_path / 'c', split='held_out'
        )


# --- the published generator --------------------------------------------------


@pytest.fixture
def published(tmp_path):
    torch.manual_seed(0)
    G = dcgan.Generator(**SMALL_G)
    G.apply(dcgan.weights_init_normal)
    path = helpers.save_generator(
        tmp_path / 'generator.pt', G, SMALL_G, {'swd': 1.5}
    )
    return G, path


def test_generator_round_trip(published):
    G, path = published
    loaded, info = helpers.load_generator(path, dcgan.Generator)
    assert info == {'config': SMALL_G, 'score': {'swd': 1.5},
                    'held_out': None}
    assert not loaded.training
    z = torch.randn(3, SMALL_G['z_size'])
    assert torch.equal(helpers.generate(G, z), helpers.generate(loaded, z))
    keys = set(torch.load(path, weights_only=True))
    assert keys == {*run.GENERATOR_KEYS, 'held_out'}


def test_training_checkpoint_is_not_a_published_generator(tmp_path):
    path = helpers.save_checkpoint(
        tmp_path / 'checkpoint.pt', {'G': {}, 'config': {}}
    )
    with pytest.raises(
        helpers.CheckpointError, match='not a published generator'
    ):
        helpers.load_generator(path, dcgan.Generator)


def test_generator_with_other_shapes_is_refused(published, tmp_path):
    G, _ = published
    wrong = helpers.save_generator(
        tmp_path / 'wrong.pt', G, {**SMALL_G, 'conv_dim': 8}
    )
    with pytest.raises(helpers.CheckpointError, match='do not fit Generator'):
        helpers.load_generator(wrong, dcgan.Generator)


def test_sample_faces_is_seeded_uint8_and_leaves_the_global_rng(published):
    G, _ = published
    state = torch.get_rng_state()
    first = helpers.sample_faces(G, SMALL_G['z_size'], 7, seed=3, batch_size=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert first.dtype == torch.uint8 and first.shape == (7, 3, 16, 16)
    assert torch.equal(
        first, helpers.sample_faces(G, SMALL_G['z_size'], 7, seed=3)
    )
    assert not torch.equal(
        first, helpers.sample_faces(G, SMALL_G['z_size'], 7, seed=4)
    )


def test_to_uint8_maps_the_range_ends():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2)
    assert helpers.to_uint8(x).flatten().tolist() == [0, 128, 255, 255]


# --- scores on known cases ----------------------------------------------------


@pytest.fixture(scope='module')
def faces():
    held_out, train = smooth_images(200, seed=1), smooth_images(400, seed=2)
    noise = torch.randint(
        0,
        256,
        held_out.shape,
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(3),
    )
    return {
        'held_out': held_out,
        'train': train,
        'noise': noise,
        'blur': blurred(smooth_images(200, seed=4)),
    }


def test_a_set_against_itself_scores_zero(faces):
    assert score.score_faces(faces['held_out'], faces['held_out'])['swd'] < 1e-6


def test_noise_scores_far_above_the_floor_and_blur_in_between(faces):
    floor = score.real_floor(faces['held_out'], faces['train'], 200)
    blur = score.score_faces(faces['blur'], faces['held_out'])['swd']
    noise = score.score_faces(faces['noise'], faces['held_out'])['swd']
    assert floor * 2 < blur < noise / 2, (floor, blur, noise)


def test_copies_of_training_faces_are_flagged(faces):
    copies = score.score_faces(
        faces['train'][:200], faces['held_out'], faces['train']
    )
    fresh = score.score_faces(
        smooth_images(200, seed=5), faces['held_out'], faces['train']
    )
    assert copies['memorisation'] < 0.05 < 0.8 < fresh['memorisation']


def test_evaluate_script(published, face_folder, tmp_path, capsys):
    _, weights = published
    out, samples = tmp_path / 'scores.json', tmp_path / 'fake.pt'
    result = evaluate.main(
        [
            '--real',
            str(face_folder),
            '--weights',
            str(weights),
            '--json',
            str(out),
            '--save-samples',
            str(samples),
        ]
    )
    printed = capsys.readouterr().out
    assert 'SWD' in printed and 'floor' in printed and 'Memorisation' in printed
    saved = json.loads(out.read_text())
    assert saved['n'] == 4  # the 4 held-out faces of 40
    assert saved['swd'] == result['swd'] > 0
    assert saved['swd_over_floor'] == pytest.approx(
        saved['swd'] / saved['floor']
    )
    fake = torch.load(samples, weights_only=True)
    assert fake.dtype == torch.uint8 and fake.shape == (4, 3, 16, 16)
    # The floor was stored beside the data, and the next run takes it from
    # there.
    assert list(helpers.metrics_cache_dir(face_folder).glob('swd-*.json'))
    again = evaluate.main(
        ['--real', str(face_folder), '--weights', str(weights)]
    )
    assert again['floor'] == result['floor']


def test_evaluate_script_on_every_image_without_floor(
    published, face_folder, tmp_path
):
    _, weights = published
    result = evaluate.main(
        [
            '--real',
            str(face_folder),
            '--weights',
            str(weights),
            '--split',
            'all',
            '--n',
            '10',
        ]
    )
    assert (
        result['n'] == 10
        and 'floor' not in result
        and 'memorisation' not in result
    )


def test_evaluate_script_names_a_missing_weights_file(face_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match='nothing.pt'):
        evaluate.main(
            [
                '--real',
                str(face_folder),
                '--weights',
                str(tmp_path / 'nothing.pt'),
            ]
        )


def test_the_held_out_fingerprint_follows_the_names_held_out(tmp_path):
    from conftest import write_jpegs

    write_jpegs(tmp_path / 'a' / 'celeba', 40)
    write_jpegs(tmp_path / 'b' / 'celeba', 40, seed=5)  # other pixels
    write_jpegs(tmp_path / 'c' / 'celeba', 50)  # 5 held out, not 4
    fingerprint = held_out_fingerprint
    assert fingerprint(tmp_path / 'a') == fingerprint(tmp_path / 'b')
    assert fingerprint(tmp_path / 'a') != fingerprint(tmp_path / 'c')
    # The subfolder ranks its images by other names: other faces held out.
    assert (helpers.split_files(list_faces(tmp_path / 'a'), 'held_out')
            != ['celeba/' + name for name in helpers.split_files(
                list_faces(tmp_path / 'a' / 'celeba'), 'held_out')])
    assert fingerprint(tmp_path / 'a') != fingerprint(tmp_path / 'a' /
                                                      'celeba')


@pytest.fixture
def trained_on_the_course_folder(face_folder, tmp_path):
    """A generator published as the notebook publishes it, after training
    on face_folder (processed_celeba_small/, holding celeba/)."""
    torch.manual_seed(0)
    G = dcgan.Generator(**SMALL_G)
    return helpers.save_generator(tmp_path / 'generator.pt', G, SMALL_G,
                                  {'swd': 1.5}, data_dir=face_folder)


def test_evaluate_is_quiet_on_the_folder_the_generator_trained_on(
        trained_on_the_course_folder, face_folder, capsys):
    weights = str(trained_on_the_course_folder)
    assert (helpers.load_generator(weights, dcgan.Generator)[1]['held_out']
            == held_out_fingerprint(face_folder))
    result = evaluate.main(['--real', str(face_folder), '--weights', weights])
    assert result['held_out_as_trained'] is True
    assert 'Warning' not in capsys.readouterr().err


def test_evaluate_warns_when_the_held_out_faces_may_be_training_faces(
        trained_on_the_course_folder, face_folder, capsys):
    """Reported: --real processed_celeba_small/celeba held out other faces
    than training did, most of them faces the generator trained on, and the
    score flattered it without a word."""
    weights = str(trained_on_the_course_folder)
    subfolder = face_folder / 'celeba'
    result = evaluate.main(['--real', str(subfolder), '--weights', weights])
    warning = capsys.readouterr().err
    assert 'was trained with other faces held out than' in warning
    assert str(subfolder) in warning and '--split all' in warning
    # The folder named is still the one scored, and the JSON says so.
    assert result['real'] == str(subfolder) and result['n'] == 4
    assert result['held_out_as_trained'] is False


def test_evaluate_cannot_check_a_generator_saved_without_its_data(
        published, face_folder, capsys):
    _, weights = published
    result = evaluate.main(['--real', str(face_folder), '--weights',
                            str(weights)])
    assert result['held_out_as_trained'] is None
    assert 'Warning' not in capsys.readouterr().err


# --- where users stand: a checkout that already holds the course folder -------


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A project folder after an earlier run: processed_celeba_small/ with
    40 faces and a cache beside them; plus a zip of 30 other faces."""
    from conftest import write_jpegs

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('FACEGEN_DATA', raising=False)
    write_jpegs(tmp_path / 'processed_celeba_small' / 'celeba', 40)
    helpers.load_faces('processed_celeba_small', 16)  # leaves .facegen-cache
    write_jpegs(tmp_path / 'mine' / 'faces', 30, seed=9)
    with zipfile.ZipFile(tmp_path / 'other.zip', 'w') as zf:
        for path in sorted((tmp_path / 'mine').rglob('*.jpg')):
            zf.write(path, path.relative_to(tmp_path).as_posix())
    return tmp_path


def test_evaluate_refuses_to_score_a_named_zip_against_other_data(
    published, checkout
):
    # Reported bug: --real OTHER.zip scored the course faces left in
    # processed_celeba_small/ instead, silently.
    _, weights = published
    before = sorted(
        p.name
        for p in (checkout / 'processed_celeba_small' / 'celeba').iterdir()
    )
    with pytest.raises(FileExistsError, match='(?s)other.zip.*--data-dir'):
        evaluate.main(
            ['--real', 'other.zip', '--weights', str(weights), '--split', 'all']
        )
    after = sorted(
        p.name
        for p in (checkout / 'processed_celeba_small' / 'celeba').iterdir()
    )
    assert after == before  # nothing lost


def test_evaluate_scores_the_named_zip_in_its_own_folder(published, checkout):
    _, weights = published
    args = ['--real', 'other.zip', '--weights', str(weights), '--split',
            'all', '--n', '100', '--data-dir', 'other_faces']
    assert evaluate.main(args)['n'] == 30  # the zip's 30 faces, not the 40
    assert evaluate.main(args)['n'] == 30  # extracted once, then reused


def test_evaluate_scores_a_named_folder_in_place(published, checkout):
    _, weights = published
    result = evaluate.main(['--real', 'mine', '--weights', str(weights),
                            '--split', 'all', '--n', '100'])
    assert result['n'] == 30


def test_evaluate_command_line_explains_the_refusal(published, checkout):
    _, weights = published
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / 'evaluate.py'),
            '--real',
            'other.zip',
            '--weights',
            str(weights),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert 'evaluate.py:' in done.stderr and '--data-dir' in done.stderr
    assert 'Traceback' not in done.stderr


# --- registry and pictures ----------------------------------------------------


def test_calc_metric_records_and_logs(faces, tmp_path):
    record = metrics.calc_metric('swd_fast', faces['held_out'], faces['blur'])
    assert record['metric'] == 'swd_fast' and record['sizes'] == [200, 200]
    assert isinstance(record['value'], float) and record['value'] > 0
    log = tmp_path / 'log' / 'metrics.jsonl'
    metrics.append_jsonl(record, log)
    metrics.append_jsonl(record, log)
    lines = log.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [record, record]
    with pytest.raises(ValueError, match='Unknown metric'):
        metrics.calc_metric('fid', faces['held_out'], faces['blur'])


def test_samples_gif_has_one_frame_per_epoch(tmp_path):
    samples = [torch.rand(8, 3, 16, 16) * 2 - 1 for _ in range(3)]
    path = helpers.save_samples_gif(
        samples, tmp_path / 'a' / 'samples.gif', nrow=4
    )
    with Image.open(path) as gif:
        assert gif.n_frames == 3
        label = 20 + 8  # the strip above the faces naming the epoch
        assert gif.size == (3 * (4 * 18 + 2), 3 * (2 * 18 + 2) + label)


def test_score_plot_and_nearest_pairs_are_saved(faces, tmp_path):
    helpers.plot_scores(
        [30.0, 20.0, 15.0], floor=10.0, path=tmp_path / 'scores.png'
    )
    pairs = metrics.nearest_pairs(faces['blur'], faces['train'], k=4)
    helpers.show_nearest_pairs(
        faces['blur'], faces['train'], pairs, tmp_path / 'pairs.png'
    )
    assert (tmp_path / 'scores.png').stat().st_size > 0
    assert (tmp_path / 'pairs.png').stat().st_size > 0
    with pytest.raises(ValueError, match='empty'):
        helpers.plot_scores([])


def test_recalibrate_batch_norm_fits_the_statistics_to_the_weights(published):
    G, _ = published
    G.train()
    weights = {name: p.clone() for name, p in G.named_parameters()}
    bn = G.upsample[0]  # the first batch norm, on the projected 4x4 maps
    bn.running_mean.fill_(5.0)  # stale statistics, as after training
    state = torch.get_rng_state()
    helpers.recalibrate_batch_norm(G, SMALL_G['z_size'])
    assert torch.equal(torch.get_rng_state(), state)
    assert G.training, 'the training mode must be restored'
    assert all(
        torch.equal(p, weights[name]) for name, p in G.named_parameters()
    )
    with torch.no_grad():
        maps = G.project(torch.randn(4096, SMALL_G['z_size'])).view(
            -1, G.top_channels, 4, 4  # (4096, C, 4, 4)
        )
    assert torch.allclose(bn.running_mean, maps.mean(dim=(0, 2, 3)), atol=0.02)
    again = copy.deepcopy(G)
    helpers.recalibrate_batch_norm(again, SMALL_G['z_size'])
    assert torch.equal(again.upsample[0].running_var, bn.running_var), (
        'seeded: repeatable'
    )


def test_show_gif_embeds_the_animation(tmp_path):
    path = helpers.save_samples_gif(
        [torch.zeros(4, 3, 8, 8)] * 2, tmp_path / 'a.gif', nrow=2
    )
    html = helpers.show_gif(path).data
    assert html.startswith(
        '<img src="data:image/gif;base64,R0lGOD'  # the GIF89a magic
    )
