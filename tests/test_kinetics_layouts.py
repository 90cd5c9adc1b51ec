"""Kinetics-400 trees as users really have them, read in place from a path and from S3.

The trees use the 400 real class names (spaces, parentheses, apostrophes), YouTube ids that
start with '-', and annotated videos that are missing, as in every real download.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from test_data_scale import upload_tree

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.data import data_check, data_layout
from video_kd.data.dataset import generate_dataset

K400_CLASSES = (
    (Path(__file__).parent / 'data' / 'kinetics400' / 'label_map_k400.txt').read_text().splitlines()
)
# three real classes whose folder names need care
USED = ["massaging person's head", 'hurling (sport)', 'passing American football (in game)']
HEADER = ['label', 'youtube_id', 'time_start', 'time_end', 'split', 'is_cc']


@pytest.fixture(scope='module')
def clips(tmp_path_factory) -> list[Path]:
    """Real decodable clips to place in the trees."""
    root = generate_dataset(
        tmp_path_factory.mktemp('clips'), num_classes=3, train_per_class=2, val_per_class=1,
        num_frames=12, size=64,
    )  # fmt: skip
    return sorted((root / 'videos').rglob('*.mp4'))


def _rows(split: str) -> list[dict[str, str]]:
    """Two present videos per class and one missing one (ids starting with '-')."""
    rows = []
    for c, label in enumerate(USED):
        for i in range(3 if split == 'train' else 2):
            start = 10 * i
            rows.append(dict(label=label, youtube_id=f'-{split[0]}{c}{i}xYz_-Q', time_start=str(start),
                             time_end=str(start + 10), split=split, is_cc='0'))  # fmt: skip
    return rows


def build_tree(root: Path, clips: list[Path], style: str) -> dict[str, list[dict[str, str]]]:
    """A Kinetics tree: 'flat' (CVDF: train/<clip>, annotations/train.csv),
    'spaced' (MMAction2's download.py: videos_train/<label>/<clip>) or 'underscored'."""
    (root / 'annotations').mkdir(parents=True)
    rows = {split: _rows(split) for split in ('train', 'val')}
    names = data_layout.FLAT if style == 'flat' else data_layout.replace(
        data_layout.MMACTION2, spaced_folders=style == 'spaced')  # fmt: skip
    csv_name = {'train': 'train.csv', 'val': 'val.csv'} if style == 'flat' else {
        'train': 'kinetics_train.csv', 'val': 'kinetics_val.csv'}  # fmt: skip
    pool = iter(clips * 4)
    for split, split_rows in rows.items():
        with open(root / 'annotations' / csv_name[split], 'w', newline='') as f:
            writer = csv.DictWriter(f, HEADER)
            writer.writeheader()
            writer.writerows(split_rows)
        for row in split_rows:
            if row['time_start'] == '20' or (split == 'val' and row['time_start'] == '10'):
                continue  # not downloadable any more
            video = root / getattr(names, f'{split}_videos') / data_layout.clip_path(row, names)
            video.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(next(pool), video)
    (root / 'label_map_k400.txt').write_text('\n'.join(K400_CLASSES) + '\n')
    return rows


@pytest.mark.parametrize('style', ['flat', 'spaced', 'underscored'])
def test_every_kinetics_copy_is_read_in_place(style, clips, tmp_path):
    build_tree(tmp_path / 'k400', clips, style)
    found = data_layout.resolve(str(tmp_path / 'k400'))
    assert found.layout == ('kinetics-flat' if style == 'flat' else 'mmaction2')
    assert found.classes == K400_CLASSES  # label-map order, all 400
    label = K400_CLASSES.index(USED[0])
    folder = {'flat': '', 'spaced': f'{USED[0]}/', 'underscored': "massaging_person's_head/"}[style]
    assert found.splits['train'].lines[0] == f'{folder}-t00xYz_-Q_000000_000010.mp4 {label}'
    videos = {'flat': 'train', 'spaced': 'videos_train', 'underscored': 'videos_train'}[style]
    assert found.splits['train'].videos_uri == str(tmp_path / 'k400' / videos)
    report = data_check.validate_source(found, tmp_path / 'out', processes=1, threads=2)
    train, val = report['splits']
    assert (train['valid'], train['total'], val['valid'], val['total']) == (6, 9, 3, 6)
    assert {r['reason'] for r in train['rejected']} == {data_check.NO_SUCH_OBJECT}


def test_the_flat_copy_on_s3_and_its_split_roots_as_options(clips, tmp_path, bucket, s3_env):
    build_tree(tmp_path / 'k400', clips, 'flat')
    (tmp_path / 'k400' / 'train').rename(tmp_path / 'k400' / 'train_256')
    (tmp_path / 'k400' / 'val').rename(tmp_path / 'k400' / 'val_256')
    uri = upload_tree(tmp_path / 'k400', bucket, 'cvdf/k400', s3_env)
    found = data_layout.resolve(f'{uri}?train_videos=train_256&val_videos=val_256')
    assert found.layout == 'custom' or found.layout == 'kinetics-flat'
    assert found.splits['val'].videos_uri == f'{uri}/val_256'
    assert found.splits['val'].lines[0].startswith('-v00xYz_-Q_000000_000010.mp4 ')
    report = data_check.validate_source(found, tmp_path / 'out', processes=1, threads=2)
    assert [s['valid'] for s in report['splits']] == [6, 3]


def test_videos_nowhere_the_layout_looks_names_pattern_root_and_what_is_there(clips, tmp_path):
    build_tree(tmp_path / 'k400', clips, 'flat')
    (tmp_path / 'k400' / 'train').rename(tmp_path / 'k400' / 'clips_train')
    with pytest.raises(data_check.DataCheckError) as error:
        data_check.validate_source(data_layout.resolve(str(tmp_path / 'k400')), tmp_path / 'o')
    line = str(error.value)
    assert f'the train videos root {tmp_path / "k400" / "videos_train"} is empty or missing' in line
    assert 'found: annotations/, clips_train/, val/, label_map_k400.txt' in line
    # clips named another way (<youtube_id>.mp4): the line says what it looked for
    (tmp_path / 'k400' / 'clips_train').rename(tmp_path / 'k400' / 'train')
    for video in (tmp_path / 'k400' / 'train').iterdir():
        video.rename(video.with_name(video.name.split('_0000')[0] + '.mp4'))
    uri = f'{tmp_path / "k400"}?train_videos=train&val_videos=val&flat=true'
    with pytest.raises(data_check.DataCheckError) as error:
        data_check.validate_source(data_layout.resolve(uri), tmp_path / 'o')
    line = str(error.value)
    assert 'no usable video among the 9 entries' in line
    assert f'looked for {tmp_path / "k400" / "train"}/-t00xYz_-Q_000000_000010.mp4 ' in line
    assert '(train/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4)' in line
    assert 'train/ holds videos directly inside (flat)' in line
    assert '\n' not in line


def test_a_root_in_no_layout_says_what_was_expected_and_found(tmp_path):
    (tmp_path / 'clips').mkdir()
    (tmp_path / 'clips' / 'a.mp4').write_bytes(b'x')
    (tmp_path / 'notes.txt').write_text('x')
    with pytest.raises(data_layout.LayoutError) as error:
        data_layout.resolve(str(tmp_path))
    line = str(error.value)
    assert 'no layout matches: expected train_list.txt' in line
    assert 'found: clips/, notes.txt' in line


def test_label_maps_and_csvs_that_cannot_be_used_are_one_line(clips, tmp_path):
    root = tmp_path / 'k400'
    build_tree(root, clips, 'flat')
    (root / 'label_map_k400.txt').write_text('\n'.join(K400_CLASSES[:200]) + '\n')
    with pytest.raises(
        data_layout.LayoutError,
        match=r"train\.csv: label 'passing American football \(in game\)' is not in the class list",
    ):
        data_layout.resolve(str(root))
    (root / 'label_map_k400.txt').write_text('\n'.join([*K400_CLASSES, 'yoga']) + '\n')
    with pytest.raises(data_layout.LayoutError, match="class name 'yoga' is on lines 399 and 401"):
        data_layout.resolve(str(root))
    (root / 'label_map_k400.txt').write_text('\n'.join(K400_CLASSES) + '\n')
    text = (root / 'annotations' / 'train.csv').read_text()
    (root / 'annotations' / 'train.csv').write_text(text.replace('youtube_id', 'ytid'))
    with pytest.raises(
        data_layout.LayoutError, match=r'not a Kinetics annotation CSV \(no youtube_id'
    ):
        data_layout.resolve(str(root))


def test_a_label_map_shorter_than_the_lists_is_one_line(tmp_path):
    root = generate_dataset(tmp_path / 'mm', layout='mmaction2', num_classes=3, train_per_class=1,
                            val_per_class=1, num_frames=8, size=32)  # fmt: skip
    (root / 'label_map_k400.txt').write_text('move_up\nmove_down\n')
    with pytest.raises(data_layout.LayoutError, match=r'uses labels up to 2 but .*names 2 classes'):
        data_layout.resolve(str(root))


def _probed(uri: str) -> tuple[str, str, str]:
    """What the probe decided: the layout, the train videos root (under the dataset root)
    and the first train line."""
    found = data_layout.resolve(uri)
    train = found.splits['train']
    return found.layout, train.videos_uri.rsplit('/', 1)[1], train.lines[0]


def test_probing_s3_decides_from_one_listing_per_directory(
    clips, tmp_path, bucket, s3_env, monkeypatch
):
    """Where the CSVs give the lists, the probe reads one listing page per directory rather
    than a HEAD per row, root and folder style (54 HEADs here when nothing matched; ~180
    at the 20 rows probed of a real K400): the same verdicts as on disk, no HEAD."""
    from s3_proxy import S3Proxy

    spaced, renamed = tmp_path / 'spaced', tmp_path / 'renamed'
    build_tree(spaced, clips, 'spaced')
    build_tree(renamed, clips, 'flat')
    for video in (renamed / 'train').iterdir():  # <youtube_id>.mp4: no style matches
        video.rename(video.with_name(video.name.split('_0000')[0] + '.mp4'))
    trees = {tree: upload_tree(tree, bucket, tree.name, s3_env) for tree in (spaced, renamed)}
    on_disk = {tree: _probed(str(tree)) for tree in trees}
    first = f'{USED[0]}/-t00xYz_-Q_000000_000010.mp4 {K400_CLASSES.index(USED[0])}'
    assert on_disk[spaced] == ('mmaction2', 'videos_train', first)
    assert on_disk[renamed][:2] == ('mmaction2', 'videos_train')  # nothing found: as detected
    proxy = S3Proxy(s3_env).start()
    monkeypatch.setenv('S3_ENDPOINT_URL', proxy.url)
    try:
        for tree, uri in trees.items():
            proxy.reset_counts()
            assert _probed(uri) == on_disk[tree]
            assert proxy.counts['HEAD'] == 0
            assert proxy.paths[f'GET /{bucket}'] <= 6  # listings, the probe's and detection's
        # a directory larger than one listing page: a HEAD for what the page cannot tell
        monkeypatch.setattr(data_layout, 'LISTING_PAGE', 1)
        for tree, uri in trees.items():
            proxy.reset_counts()
            assert _probed(uri) == on_disk[tree]
            assert proxy.counts['HEAD'] > 0
    finally:
        proxy.stop()


def test_training_finds_a_dataset_spec_once(tmp_path, monkeypatch):
    """`python -m video_kd.distill.train --data-root <spec>`: the spec is looked up once
    (for the class count and the videos root) and data prep reuses what was found."""
    from video_kd.data import data_stream
    from video_kd.distill import train

    root = generate_dataset(tmp_path / 'mm', layout='mmaction2', num_classes=3, train_per_class=1,
                            val_per_class=1, num_frames=8, size=32)  # fmt: skip
    looked_up = []

    def resolve(uri, names=None, real=data_layout.resolve):
        looked_up.append(uri)
        return real(uri, names)

    monkeypatch.setattr(data_layout, 'resolve', resolve)
    monkeypatch.setattr(data_stream, 'resolve', resolve)
    argv = ['tsm_mobilenetv2_tiny', '--work-dir', str(tmp_path / 'work'), '--data-root', str(root)]
    cfg = train.build_config(train.parse_args([*argv, '--no-data-check']))
    assert looked_up == [str(root)]
    assert cfg.model.cls_head.num_classes == 3
    assert cfg.train_dataloader.dataset.ann_file == str(
        tmp_path / 'work' / 'data' / 'train_list.txt'
    )
