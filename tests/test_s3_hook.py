"""video_kd.distill.s3_hook against the session's moto server: hashing once, epochs, name clashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from video_kd.distill import s3_hook
from video_kd.runs import Manifest, RunLayout
from video_kd.storage import s3


@pytest.fixture
def hash_reads(monkeypatch) -> list[str]:
    """Every file that is actually read to be hashed (the memo's misses)."""
    reads: list[str] = []
    real = s3._hash_stream

    def counting(path):
        reads.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(s3, '_hash_stream', counting)
    s3._hash_memo.clear()
    return reads


def checkpoint(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_upload_checkpoint_hashes_each_file_once(bucket, tmp_path, hash_reads):
    # regression: publish/upload_checkpoint hashed it, then Manifest.record hashed it again
    layout = RunLayout(bucket, 'kd', 'run-hash')
    for epoch in (1, 2):
        s3_hook.upload_checkpoint(layout, checkpoint(tmp_path, f'epoch_{epoch}.pth', b'w' * epoch))
    assert hash_reads == ['epoch_1.pth', 'epoch_2.pth']


def test_publish_hashes_once_and_is_idempotent(bucket, tmp_path, hash_reads):
    layout = RunLayout(bucket, 'kd', 'run-publish')
    path = checkpoint(tmp_path, 'config.py', b'x = 1')
    uri = layout.uri('train', 'logs', 'config.py')
    first = Manifest.load(layout).publish('train', path, uri)
    again = Manifest.load(layout).publish('train', path, uri)
    assert first == again
    assert hash_reads == ['config.py']
    assert len(Manifest.load(layout).entries) == 1


def test_publish_refuses_other_content_on_a_taken_key(bucket, tmp_path):
    layout = RunLayout(bucket, 'kd', 'run-publish-other')
    uri = layout.uri('train', 'logs', 'a.log')
    Manifest.load(layout).publish('train', checkpoint(tmp_path, 'a', b'1'), uri)
    with pytest.raises(s3.ObjectExistsError, match='holds other content'):
        Manifest.load(layout).publish('train', checkpoint(tmp_path, 'b', b'2'), uri)
    assert s3.read_bytes(uri) == b'1'


def test_rewritten_file_is_hashed_again(tmp_path, hash_reads):
    path = checkpoint(tmp_path, 'epoch_1.pth', b'old')
    first = s3.sha256_file(path)
    path.write_bytes(b'new content')  # another size and mtime
    assert s3.sha256_file(path) != first
    assert hash_reads == ['epoch_1.pth', 'epoch_1.pth']


def test_checkpoint_epochs_counts_retries_once(bucket, tmp_path):
    # regression: `epochs` was len(checkpoints), so epoch_2.1.pth made 2 epochs look like 3
    layout = RunLayout(bucket, 'kd', 'run-epochs')
    s3_hook.upload_checkpoint(layout, checkpoint(tmp_path, 'epoch_1.pth', b'one'))
    s3_hook.upload_checkpoint(layout, checkpoint(tmp_path, 'epoch_2.pth', b'two'))
    retry = tmp_path / 'retry'
    retry.mkdir()
    uri = s3_hook.upload_checkpoint(layout, checkpoint(retry, 'epoch_2.pth', b'two, retrained'))
    assert uri.endswith('/epoch_2.1.pth')
    assert len(s3_hook.list_checkpoints(layout)) == 3
    assert s3_hook.checkpoint_epochs(layout) == [1, 2]
    assert s3_hook.latest_checkpoint_uri(layout) == uri


def test_same_checkpoint_uploaded_twice_is_one_object(bucket, tmp_path):
    layout = RunLayout(bucket, 'kd', 'run-twice')
    path = checkpoint(tmp_path, 'epoch_1.pth', b'one')
    assert s3_hook.upload_checkpoint(layout, path) == s3_hook.upload_checkpoint(layout, path)
    assert s3_hook.checkpoint_epochs(layout) == [1]
    assert len(s3_hook.list_checkpoints(layout)) == 1


@pytest.mark.parametrize('size', [1024, 6 * 1024 * 1024], ids=['single-put', 'multipart'])
def test_checkpoint_stored_but_not_recorded_is_reused(bucket, tmp_path, monkeypatch, size):
    """What an attempt whose manifest save failed leaves behind: the object, no entry.
    The retry records it; before, it uploaded the same bytes again as epoch_1.1.pth."""
    from video_kd.storage import s3_conditional

    monkeypatch.setattr(s3_conditional, 'MULTIPART_THRESHOLD', 5 * 1024 * 1024)
    layout = RunLayout(bucket, 'kd', f'run-partial-{size}')
    path = checkpoint(tmp_path, 'epoch_1.pth', bytes(range(256)) * (size // 256))
    uri = s3.upload_file(path, s3.join_uri(s3_hook.checkpoint_prefix(layout), 'epoch_1.pth'))
    assert not Manifest.load(layout).entries

    assert s3_hook.upload_checkpoint(layout, path) == uri
    assert s3_hook.list_checkpoints(layout) == [uri]
    entry = Manifest.load(layout).find(uri)
    assert (entry.sha256, entry.size_bytes) == (s3.sha256_file(path), size)
    # the same size, other bytes (another pod's epoch 1): the next name, as before
    (tmp_path / 'other').mkdir()
    other = checkpoint(tmp_path / 'other', 'epoch_1.pth', b'x' * len(path.read_bytes()))
    assert s3_hook.upload_checkpoint(layout, other).endswith('/epoch_1.1.pth')
