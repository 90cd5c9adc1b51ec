"""What the components' plain entry points share: S3 settings, the run root, JSON output."""

from __future__ import annotations

import argparse
import json
import sys

ERRORS = 'bad input is one `error: ...` line, exit status 2'
S3_EPILOG = (
    'S3: credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (never flags), '
    'endpoint from S3_ENDPOINT_URL (MinIO, Ceph; unset means AWS). Prints the output '
    f"artifact's metadata as JSON on stdout; {ERRORS} (75 when S3 is unreachable: try again)."
)


def parser(prog: str, description: str, epilog: str = S3_EPILOG) -> argparse.ArgumentParser:
    """A step's parser; ``epilog``: what it reads and prints (default: a step on S3)."""
    return argparse.ArgumentParser(
        prog=f'python -m components.{prog}', description=description, epilog=epilog
    )


def add_run_root(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        '--run-root',
        required=True,
        help="the run's S3 directory, s3://<bucket>/<prefix>/<run-id> "
        '(printed by data_prep as run_root)',
    )


def finish(meta: dict) -> int:
    json.dump(meta, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0
