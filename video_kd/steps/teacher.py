"""Step 2, teacher download: fetch the teacher (verified, cached by checksum) into ``teacher/``.

The checkpoint is checked against the KD config's teacher before it is
published; the seed's released TSN-Swin teacher (timm names) is converted to
the mmpretrain Swin our config builds (``video_kd.distill.teacher_checkpoint``), and the
converted file is published with its own sha256 and the source's (the step's output
and its manifest entry's ``source_sha256``).
"""

from __future__ import annotations

from pathlib import Path

from video_kd.core.artifacts import Teacher, TeacherCheck
from video_kd.core.checks import check_sha256
from video_kd.core.errors import UserError
from video_kd.distill.teacher_checkpoint import convert_teacher_checkpoint
from video_kd.openmmlab.config import load_config
from video_kd.runs import RunLayout, check_claimed, publish, run_info
from video_kd.steps.common import record_output, scratch_dir
from video_kd.storage import download


def check_source(url: str, sha256: str = '') -> None:
    """The teacher's URL: given, of a scheme we fetch, naming a file; its sha256: required
    (the teacher is the one file every training pod loads)."""
    if not url:
        raise UserError(
            'teacher_url is empty: give the https:// or s3:// URL of the teacher '
            'checkpoint (and its sha256)'
        )
    download.check_url(url, 'teacher_url')
    check_sha256(sha256, 'teacher_sha256', required=True)


def run(
    run_root: str,
    url: str,
    sha256: str = '',
    kd_config: str = '',
    num_classes: int = 0,
    workdir: str | Path | None = None,
) -> Teacher:
    """Fetch ``url`` (https://, s3://, file://) with retries, check its sha256, keep a copy in
    the S3 cache keyed by checksum and publish it as ``<run>/teacher/<file name>``.

    With ``kd_config``, the checkpoint must fit that config's teacher (for
    ``num_classes`` classes): a timm Swin checkpoint is converted, anything
    else that does not fit is refused before it is cached or published.
    """
    check_source(url, sha256)
    layout = RunLayout.from_root(run_root)
    check_claimed(layout)
    with scratch_dir(workdir, 'teacher') as work:
        fitted: list[tuple[Path, TeacherCheck]] = []

        def fits(fetched: Path) -> None:
            """Checked (converted) against the KD config before the cache keeps it."""
            fitted.append(
                convert_teacher_checkpoint(fetched, load_config(kd_config), num_classes or None)
            )

        fetched = download.fetch(
            url, work, sha256=sha256 or None, cache=layout, check=fits if kd_config else None
        )
        path, checked = fitted[-1] if fitted else (fetched.path, TeacherCheck())
        # a converted teacher is not the file at ``url``: the manifest keeps both checksums
        source = checked['source_sha256'] if checked.get('converted') else ''
        entry = publish(layout, 'teacher', path, path.name, source_sha256=source)
        meta: Teacher = {
            **run_info(layout),
            **entry.meta(),
            **checked,
            'filename': path.name,
            'source_url': url,
            'cache_hit': fetched.cache_hit,
        }
        record_output(layout, 'teacher', meta)  # the source URL, for steps run alone and the card
        return meta
