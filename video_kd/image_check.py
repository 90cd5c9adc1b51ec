"""Does this installation hold everything the pipeline imports?  ``python -m video_kd.image_check``

Imports every module of the installed packages (video_kd, components, pipelines), the
way each step will at run time, and stops at the first one that cannot be imported with
one line naming the missing module and who imports it. The image build runs it as its
last smoke check (docker/Dockerfile), so an image that lacks a runtime dependency (one
that only a test extra installs, say) fails to build instead of failing on a cluster.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time

from video_kd.core.errors import UserError, run_cli

PACKAGES = ('video_kd', 'components', 'pipelines')


class MissingModuleError(UserError):
    """A module of the project cannot be imported here."""


def project_modules(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Every module and subpackage of ``packages``, sorted, packages themselves included."""
    names: list[str] = []
    for name in packages:
        package = importlib.import_module(name)
        names.append(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f'{name}.'):
            names.append(info.name)
    return sorted(set(names))


def import_all(names: list[str]) -> None:
    """Import each module; the first failure becomes a MissingModuleError naming both ends."""
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise MissingModuleError(
                f'this installation lacks module {exc.name!r}, imported by {name} '
                '(is it a runtime dependency in pyproject.toml, not only in an extra?)'
            ) from exc
        except ImportError as exc:
            raise MissingModuleError(f'cannot import {name}: {exc}') from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m video_kd.image_check',
        description='Import every module of video_kd, components and pipelines, as the '
        'pipeline steps will; exit 2 with one line naming the first missing module. '
        'The image build runs it; run it in an image to check that image.',
    )
    parser.add_argument('--list', action='store_true', help='print the modules as imported')
    args = parser.parse_args(argv)
    started = time.monotonic()
    names = project_modules()
    import_all(names)
    if args.list:
        print('\n'.join(names))
    print(
        f'imported {len(names)} modules of {", ".join(PACKAGES)} '
        f'in {time.monotonic() - started:.1f}s',
        file=sys.stderr,
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
