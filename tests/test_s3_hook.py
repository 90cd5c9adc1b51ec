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


# --------------------------------------------------------------------------- resume choice


def real_checkpoints(layout: RunLayout, tmp_path: Path, epochs: int) -> list[str]:
    """``epochs`` small mmengine-like checkpoints, uploaded and recorded as training does."""
    import torch

    uris = []
    for epoch in range(1, epochs + 1):
        path = tmp_path / 'written' / f'epoch_{epoch}.pth'
        path.parent.mkdir(exist_ok=True)
        torch.save({'state_dict': {'w': torch.full((64,), float(epoch))}, 'meta': {}}, path)
        uris.append(s3_hook.upload_checkpoint(layout, path))
    return uris


def cut_short(uri: str, tmp_path: Path) -> bytes:
    """The stored object with its last half gone (what a broken copy leaves)."""
    body = s3.read_bytes(uri)
    (tmp_path / 'cut.pth').write_bytes(body[: len(body) // 2])
    s3.upload_file(tmp_path / 'cut.pth', uri, overwrite=True)
    return body[: len(body) // 2]


def test_a_truncated_newest_checkpoint_is_skipped_for_the_one_before(bucket, tmp_path, caplog):
    """Issue 25 point 3: the manifest's sha256 no longer matches the newest checkpoint (bytes
    cut): the pod warns naming it and resumes from the previous one, instead of a raw
    RuntimeError on every re-run."""
    layout = RunLayout(bucket, 'kd', 'run-cut')
    first, second = real_checkpoints(layout, tmp_path, 2)
    cut_short(second, tmp_path)
    with caplog.at_level('WARNING', logger=s3_hook.__name__):
        entry, path = s3_hook.fetch_resume_checkpoint(layout, tmp_path / 'pod')
    assert entry.uri == first and path == tmp_path / 'pod' / 'epoch_1.pth'
    skipped = [r.getMessage() for r in caplog.records if 'skipping checkpoint' in r.getMessage()]
    assert len(skipped) == 1 and second in skipped[0], skipped
    assert 'changed since it was recorded' in skipped[0]
    assert not (tmp_path / 'pod' / 'epoch_2.pth').exists()  # nothing of it left to load
    assert not [p for p in (tmp_path / 'pod').iterdir() if p.name.endswith('.part')]


def test_a_checkpoint_recorded_cut_short_is_skipped_as_unreadable(bucket, tmp_path, caplog):
    """The manifest records the cut bytes (its sha256 matches): it fails to load weights-only,
    and that is a result the pod skips, not a traceback."""
    layout = RunLayout(bucket, 'kd', 'run-recorded-cut')
    uris = real_checkpoints(layout, tmp_path, 2)
    body = s3.read_bytes(uris[1])
    bad = tmp_path / 'again' / 'epoch_3.pth'
    bad.parent.mkdir()
    bad.write_bytes(body[: len(body) - 40])
    third = s3_hook.upload_checkpoint(layout, bad)
    with caplog.at_level('WARNING', logger=s3_hook.__name__):
        entry, _ = s3_hook.fetch_resume_checkpoint(layout, tmp_path / 'pod')
    assert entry.uri == uris[1]
    assert f'skipping checkpoint {third} (' in caplog.text
    assert 'not a readable PyTorch checkpoint' in caplog.text
    assert not (tmp_path / 'pod' / 'epoch_3.pth').exists()


def test_with_no_good_checkpoint_training_starts_over(bucket, tmp_path, caplog):
    layout = RunLayout(bucket, 'kd', 'run-none-good')
    (only,) = real_checkpoints(layout, tmp_path, 1)
    cut_short(only, tmp_path)
    with caplog.at_level('WARNING', logger=s3_hook.__name__):
        assert s3_hook.fetch_resume_checkpoint(layout, tmp_path / 'pod') is None
    assert f'skipping checkpoint {only}' in caplog.text
    assert 'training starts from the beginning' in caplog.text
    assert s3_hook.fetch_resume_checkpoint(RunLayout(bucket, 'kd', 'run-empty'), tmp_path) is None


def test_an_outage_while_fetching_is_not_a_bad_checkpoint(bucket, tmp_path, monkeypatch):
    """S3 unreachable stops the pod (exit 75, retried), it does not skip to an older epoch."""
    layout = RunLayout(bucket, 'kd', 'run-outage')
    real_checkpoints(layout, tmp_path, 2)

    def unavailable(*args, **kwargs):
        raise s3.S3UnavailableError('S3 unreachable')

    monkeypatch.setattr(s3, 'download_file', unavailable)
    with pytest.raises(s3.S3UnavailableError):
        s3_hook.fetch_resume_checkpoint(layout, tmp_path / 'pod')


# --------------------------------------------------------------------------- retention


def stored_names(layout: RunLayout) -> set[str]:
    prefix = s3_hook.checkpoint_prefix(layout) + '/'
    return {uri[len(prefix) :] for uri in s3.list_uris(prefix)}


def recorded_names(layout: RunLayout) -> set[str]:
    prefix = s3_hook.checkpoint_prefix(layout) + '/'
    manifest = Manifest.load(layout)
    return {e.uri[len(prefix) :] for e in manifest.entries if e.uri.startswith(prefix)}


def test_retention_keeps_the_newest_and_the_best_and_forgets_before_it_deletes(
    bucket, tmp_path, monkeypatch
):
    """Issue 21 point 9: the last K checkpoints and the best stay; the manifest never names a
    deleted object (checked at each delete, against the stored manifest)."""
    layout = RunLayout(bucket, 'p', 'run-a')
    real_checkpoints(layout, tmp_path, 4)
    best_2 = s3_hook.upload_checkpoint(
        layout, checkpoint(tmp_path, 'best_acc_top1_epoch_2.pth', b'best at 2')
    )
    deleted_while_named = []
    real_delete = s3.delete

    def checked_delete(uri, **kwargs):
        if Manifest.load(layout).find(uri):
            deleted_while_named.append(uri)
        real_delete(uri, **kwargs)

    monkeypatch.setattr(s3, 'delete', checked_delete)
    best_4 = s3_hook.upload_checkpoint(
        layout, checkpoint(tmp_path, 'best_acc_top1_epoch_4.pth', b'best at 4')
    )
    deleted = s3_hook.prune_checkpoints(layout, 2, best=best_4)

    assert deleted_while_named == []
    assert sorted(deleted) == sorted(
        [
            best_2,
            *(s3.join_uri(s3_hook.checkpoint_prefix(layout), f'epoch_{n}.pth') for n in (1, 2)),
        ]
    )
    kept = {'epoch_3.pth', 'epoch_4.pth', 'best_acc_top1_epoch_4.pth'}
    assert stored_names(layout) == recorded_names(layout) == kept
    assert [uri.rsplit('/', 1)[1] for uri in s3_hook.list_checkpoints(layout)] == [
        'epoch_3.pth',
        'epoch_4.pth',
    ]
    entry, path = s3_hook.fetch_resume_checkpoint(layout, tmp_path / 'pod')
    assert entry.uri.endswith('/epoch_4.pth') and path.is_file()  # resume: the newest good one


def test_a_stale_manifest_writer_cannot_bring_a_removed_checkpoint_back(bucket, tmp_path):
    """A writer that loaded the manifest before the retention (a slow pod beside a restarted
    one) merges on save: the removed entries stay removed, its own entry is kept."""
    layout = RunLayout(bucket, 'p', 'run-b')
    real_checkpoints(layout, tmp_path, 3)
    stale = Manifest.load(layout)
    s3_hook.prune_checkpoints(layout, 1)
    other = checkpoint(tmp_path, 'notes.txt', b'written by the slow pod')
    stale.record('train', other, layout.uri('train', 'notes.txt'))
    manifest = Manifest.load(layout)
    assert {e.uri.rsplit('/', 1)[1] for e in manifest.entries} == {'epoch_3.pth', 'notes.txt'}
    assert {uri.rsplit('/', 1)[1] for uri, _ in manifest.removed} == {'epoch_1.pth', 'epoch_2.pth'}
    assert stored_names(layout) == {'epoch_3.pth'}


def test_a_failed_delete_is_retried_at_the_next_retention(bucket, tmp_path, monkeypatch):
    layout = RunLayout(bucket, 'p', 'run-c')
    real_checkpoints(layout, tmp_path, 2)
    real_delete = s3.delete

    def failing_delete(uri, **kwargs):
        raise s3.S3Error(f'cannot delete {uri}: injected')

    monkeypatch.setattr(s3, 'delete', failing_delete)
    with pytest.raises(s3.S3Error, match='injected'):
        s3_hook.prune_checkpoints(layout, 1)
    # forgotten first: the manifest no longer names what is still stored
    assert recorded_names(layout) == {'epoch_2.pth'}
    assert stored_names(layout) == {'epoch_1.pth', 'epoch_2.pth'}
    monkeypatch.setattr(s3, 'delete', real_delete)
    s3_hook.prune_checkpoints(layout, 1)
    assert stored_names(layout) == {'epoch_2.pth'}


def test_the_hook_follows_mmengines_retention_and_uploads_the_best(bucket, tmp_path):
    """S3CheckpointHook reads max_keep_ckpts from the runner's CheckpointHook; the checkpoint
    it just uploaded stays even when older names outrank it (a run that started over)."""
    from types import SimpleNamespace

    from mmengine.hooks import CheckpointHook

    layout = RunLayout(bucket, 'p', 'run-d')
    for n in (5, 6):  # an earlier attempt's checkpoints, higher-numbered
        s3_hook.upload_checkpoint(layout, checkpoint(tmp_path, f'epoch_{n}.pth', b'old %d' % n))
    work = tmp_path / 'work'
    work.mkdir()
    runner = SimpleNamespace(work_dir=str(work), hooks=[CheckpointHook(max_keep_ckpts=2)])
    hook = s3_hook.S3CheckpointHook(layout.root)
    hook.before_train(runner)
    assert hook.keep_last == 2
    checkpoint(work, 'epoch_1.pth', b'new 1')
    hook.after_train_epoch(runner)
    # 5 and 6 are the newest two by name (what resume tries first); 1 was just uploaded
    assert (
        stored_names(layout)
        == recorded_names(layout)
        == {'epoch_1.pth', 'epoch_5.pth', 'epoch_6.pth'}
    )
    checkpoint(work, 'best_acc_top1_epoch_1.pth', b'best 1')
    hook.after_val_epoch(runner, {'acc/top1': 0.5})
    (work / 'best_acc_top1_epoch_1.pth').unlink()  # mmengine replaces its best file
    checkpoint(work, 'epoch_2.pth', b'new 2')
    checkpoint(work, 'best_acc_top1_epoch_2.pth', b'best 2')
    hook.after_train_epoch(runner)
    assert (
        stored_names(layout)
        == recorded_names(layout)
        == {
            'epoch_2.pth',
            'epoch_5.pth',
            'epoch_6.pth',
            'best_acc_top1_epoch_2.pth',
        }
    )
