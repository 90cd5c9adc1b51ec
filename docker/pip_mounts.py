"""The host's pip setup, made usable inside an image build (used by docker/build_image.sh).

Behind a proxy with its own CA, or with a local wheel directory, pip in a build needs
what pip on the host uses: its configuration, the CA bundle and the local directories
the configuration names. This reads the effective configuration (`pip config list`:
files and PIP_* variables), writes one pip.conf for the build, and prints the
read-only mounts that make it work, one `-v HOST:CONTAINER:ro` per line:

    python3 docker/pip_mounts.py OUT_DIR

The CA bundle and any constraint files are copied next to that pip.conf and
mounted with it, never over the image's /etc/ssl: the image's ca-certificates
package must stay writable, and a mount leaves nothing of the host behind in a
layer.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

# pip's site-wide configuration file: read by every pip in the build, no variable needed.
# pip's site-wide configuration directory (XDG_CONFIG_DIRS): read by every pip in the build
# without any variable, and one mount point only, which holds the CA bundle too.
CONF_DIR = '/etc/xdg/pip'
# Options whose values are local paths or file:// URLs that the build must see.
PATH_OPTIONS = ('find-links', 'index-url', 'extra-index-url')
# Options naming files (the CA bundle, constraint files such as a site-wide cap on torch):
# copied next to the build's pip.conf, since its mount hides the host's directory of the
# same name (/etc/xdg/pip is where such files often live).
FILE_OPTIONS = ('cert', 'client-cert', 'constraint')
LINE = re.compile(r"^(?P<section>[^.]*)\.(?P<key>[^=]+)='(?P<value>.*)'$")


def pip_config(python: str) -> dict[str, str]:
    """The effective pip options: PIP_* variables override the files (pip's own order)."""
    out = subprocess.run(
        [python, '-m', 'pip', 'config', 'list'], capture_output=True, text=True, check=True
    ).stdout
    files: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in out.splitlines():
        m = LINE.match(line.strip())
        if m and m['section'] in ('global', 'install'):
            files[m['key']] = m['value']
        elif m and m['section'] == ':env:':
            env[m['key']] = m['value']
    return {**files, **env}


def local_paths(value: str) -> list[Path]:
    """The existing local directories a find-links / index value names."""
    paths = []
    for item in value.split():
        path = Path(item.removeprefix('file://'))
        if path.is_absolute() and path.exists():
            # an index (…/simple) links to files beside it (../files): mount its parent
            paths.append(path.parent if path.name == 'simple' else path)
    return paths


def copy_files(options: dict[str, str], conf_dir: Path) -> None:
    """Copy the files FILE_OPTIONS name into conf_dir; point the options at their copies."""
    for key in FILE_OPTIONS:
        copies = []
        for i, name in enumerate(options.pop(key, '').split()):
            if Path(name).is_file():
                copy = f'{key}-{i}-{Path(name).name}'
                shutil.copyfile(name, conf_dir / copy)
                copies.append(f'{CONF_DIR}/{copy}')
        if copies:
            options[key] = ' '.join(copies)


def main(python: str, out_dir: Path) -> int:
    options = pip_config(python)
    mounts: list[str] = []
    conf_dir = out_dir / 'pip'
    conf_dir.mkdir(parents=True, exist_ok=True)
    copy_files(options, conf_dir)
    for key in PATH_OPTIONS:
        for path in local_paths(options.get(key, '')):
            mounts.append(f'{path.resolve()}:{path}:ro')
    conf = conf_dir / 'pip.conf'
    conf.write_text('[global]\n' + ''.join(f'{k} = {v}\n' for k, v in sorted(options.items())))
    mounts.append(f'{conf_dir.resolve()}:{CONF_DIR}:ro')
    print('\n'.join(dict.fromkeys(mounts)))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[2] if len(sys.argv) > 2 else sys.executable, Path(sys.argv[1])))
