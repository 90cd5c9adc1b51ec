"""Generated videos are real and decodable; validation reports bad entries, never rewrites."""

import json

import decord
import pytest

from video_kd.core.checks import InvalidInputError
from video_kd.data import data_check, dataset


@pytest.fixture
def small_dataset(tmp_path):
    return dataset.generate_dataset(
        tmp_path / 'data',
        num_classes=3,
        train_per_class=3,
        val_per_class=2,
        num_frames=10,
        size=32,
        seed=1,
    )


def test_generated_dataset_has_kinetics_layout_and_real_videos(small_dataset):
    classes = dataset.read_classes(small_dataset)
    assert classes == list(dataset.MOTIONS[:3])
    lines = (small_dataset / dataset.TRAIN_LIST).read_text().split('\n')
    lines = [line for line in lines if line]
    assert len(lines) == 9
    rel, label = lines[0].split()
    reader = decord.VideoReader(str(small_dataset / 'videos' / rel))
    assert len(reader) == 10
    assert reader[0].shape == (32, 32, 3)
    assert int(label) in range(3)


def test_frames_of_a_clip_change_over_time(small_dataset):
    """A single frame must not tell the class: the shape moves between frames."""
    rel = (small_dataset / dataset.TRAIN_LIST).read_text().split()[0]
    frames = decord.VideoReader(str(small_dataset / 'videos' / rel)).get_batch([0, 9]).asnumpy()
    assert abs(frames[0].astype(int) - frames[1].astype(int)).mean() > 5


def test_validation_reports_bad_entries_and_keeps_the_good(small_dataset, tmp_path):
    videos = small_dataset / 'videos'
    train = (small_dataset / dataset.TRAIN_LIST).read_text().splitlines()
    corrupt, empty = train[0].split()[0], train[1].split()[0]
    (videos / corrupt).write_bytes((videos / corrupt).read_bytes()[:300])  # truncated
    (videos / empty).write_bytes(b'')
    train += ['move_up/missing.mp4 0', f'{train[2].split()[0]} 7', 'no-label-here']
    (small_dataset / dataset.TRAIN_LIST).write_text('\n'.join(train) + '\n')
    original = (small_dataset / dataset.TRAIN_LIST).read_text()

    report = dataset.validate_dataset(small_dataset, tmp_path / 'clean')

    reasons = {item['path']: item['reason'] for item in report['splits'][0]['rejected']}
    assert reasons[empty] == 'empty file'
    assert reasons[corrupt].startswith('cannot decode')
    assert reasons['move_up/missing.mp4'] == 'no such object under the video root'
    assert 'unknown label' in reasons[train[2].split()[0]]
    assert 'malformed line' in reasons['no-label-here']
    assert report['splits'][0]['valid'] == 7 and report['splits'][0]['total'] == 12
    clean = (tmp_path / 'clean' / dataset.TRAIN_LIST).read_text()
    assert corrupt not in clean and empty not in clean and len(clean.splitlines()) == 7
    assert (small_dataset / dataset.TRAIN_LIST).read_text() == original  # never rewritten
    assert json.loads((tmp_path / 'clean' / 'report.json').read_text())['rejected_total'] == 5
    assert (tmp_path / 'clean' / 'videos' / train[3].split()[0]).is_file()


def test_a_dataset_with_nothing_usable_is_a_clear_error(small_dataset, tmp_path):
    (small_dataset / dataset.VAL_LIST).write_text('move_up/nope.mp4 0\n')
    with pytest.raises(data_check.DataCheckError, match='no usable video among the 1 entries'):
        dataset.validate_dataset(small_dataset, tmp_path / 'clean')


def test_validation_never_writes_into_the_dataset_root(small_dataset):
    with pytest.raises(dataset.DatasetError, match='never rewrites'):
        dataset.validate_dataset(small_dataset, small_dataset)


def test_sizes_that_do_not_decode_back_are_refused(tmp_path):
    # bad input (one line, exit 2 from a CLI), and still a ValueError for direct callers
    with pytest.raises(InvalidInputError, match='48x48 do not decode back'):
        dataset.generate_dataset(tmp_path / 'data', size=48)


def test_repeated_list_lines_are_dropped_with_one_warning(small_dataset, caplog):
    from video_kd.data import data_layout

    train = (small_dataset / dataset.TRAIN_LIST).read_text().splitlines()
    (small_dataset / dataset.TRAIN_LIST).write_text('\n'.join(train + train[:6]) + '\n')
    with caplog.at_level('WARNING', logger='video_kd.data.data_layout'):
        source = data_layout.resolve(str(small_dataset))
    assert source.splits['train'].lines == train  # 15 lines, 9 videos: each once
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f'6 repeated line(s) dropped (first: {train[0]!r})' in warning


def test_a_repeated_class_name_is_one_line_and_exit_status_2(small_dataset, tmp_path, capsys):
    from video_kd.core.errors import BAD_INPUT, run_cli
    from video_kd.data import data_layout

    (small_dataset / dataset.CLASSES_FILE).write_text('move_up\nmove_down\nmove_up\n')
    with pytest.raises(data_layout.LayoutError, match="class name 'move_up' is on lines 1 and 3"):
        data_layout.resolve(str(small_dataset))
    with pytest.raises(data_layout.LayoutError, match='each class needs its own name'):
        dataset.read_classes(small_dataset)
    out = tmp_path / 'out'
    assert run_cli(data_check.main, [str(small_dataset), '--out', str(out)]) == BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('error: ') and "class name 'move_up' is on lines 1 and 3" in err[-1]
    assert not out.exists()
