"""Step 2, teacher download: fetch the teacher (verified, cached by checksum) into ``teacher/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from video_kd import download
from video_kd.errors import UserError
from video_kd.runs import RunLayout, publish, run_info
from video_kd.steps.common import scratch_dir


def run(
    run_root: str, url: str, sha256: str = '', workdir: str | Path | None = None
) -> dict[str, Any]:
    """Fetch ``url`` (https://, s3://, file://) with retries, check its sha256, keep a copy in
    the S3 cache keyed by checksum and publish it as ``<run>/teacher/<file name>``."""
    if not url:
        raise UserError(
            'teacher_url is empty: give the https:// or s3:// URL of the teacher '
            'checkpoint (and its sha256)'
        )
    layout = RunLayout.from_root(run_root)
    with scratch_dir(workdir, 'teacher') as work:
        fetched = download.fetch(url, work, sha256=sha256 or None, cache=layout)
        entry = publish(layout, 'teacher', fetched.path, fetched.path.name)
        return {
            **run_info(layout),
            **entry.meta(),
            'filename': fetched.path.name,
            'source_url': url,
            'cache_hit': fetched.cache_hit,
        }
