"""What ``validate`` (and so every ``run``) checks so that a campaign stays inside its directory.

Everything a campaign writes lands in its directory (paths come from ``state.CampaignDir``, never
from a user string). campaign.yaml is data (see docs/security.md): a material file outside the
directory is an input only, and is warned about (the directory is then not self-contained). A directory, campaign.yaml or lock that other users can write to is warned about:
they could change what the next run computes or trains on.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hillwalker.config import CAMPAIGN_FILE
from hillwalker.state import STATE_DIR, CampaignDir


def _home(root: Path) -> Path:
    """The campaign whose files ``root`` may use: its own, or, for a smoke run's scratch
    campaign (DIR/.hillwalker/smoke, which names DIR's material files by absolute path), DIR's."""
    parent = root.parent.parent
    return parent if CampaignDir(parent).smoke == root else root


def _leaves(value: str, root: Path) -> bool:
    path = Path(value)
    if value.startswith("~"):
        return True
    if path.is_absolute() or ".." in path.parts:
        if _home(root) == root:
            return True
        # the smoke campaign's absolute paths: inside the campaign it was made from
        return not (root / path).resolve().is_relative_to(_home(root))
    return False


def material_outside(
    root: Path, material: dict[str, str | list[str]], section: str = "material"
) -> list[str]:
    """One warning per material file outside the campaign directory (a list of files, such as
    material.intermediates, by index).

    Such a file is an input (read, digested for change detection, never written), so it is not
    refused: the main job shares the template's files this way. But the directory is then not
    self-contained — moving or sharing it alone breaks it — and a change to the outside file is
    only caught by the digest at the next run.
    """
    root = Path(root).resolve()
    files = [
        (f"{key}.{n}", item) if isinstance(value, list) else (key, value)
        for key, value in material.items()
        for n, item in (enumerate(value) if isinstance(value, list) else [(0, value)])
    ]
    return [
        f"{root / CAMPAIGN_FILE}: {section}.{key}: {value!r} is outside the campaign directory "
        "(an absolute path, '..' or '~'): the campaign reads it but is not self-contained; copy "
        "the file into the directory to share or move the campaign"
        for key, value in files
        if isinstance(value, str) and _leaves(value, root)
    ]


def _writable_by_others(path: Path) -> str | None:
    try:
        info = path.stat()
    except OSError:
        return None
    if info.st_mode & stat.S_IWOTH:
        return f"world-writable (mode {stat.S_IMODE(info.st_mode):o})"
    if info.st_uid != os.geteuid():
        return f"owned by another user (uid {info.st_uid}, you are {os.geteuid()})"
    return None


def permission_warnings(root: Path) -> list[str]:
    """One warning per campaign path that other users could change: the way out included."""
    root = Path(root)
    warnings = []
    for path in (root, root / CAMPAIGN_FILE, root / STATE_DIR, CampaignDir(root).lock):
        why = _writable_by_others(path)
        if why:
            warnings.append(
                f"{path}: {why}: another user could change what this campaign computes or "
                f"trains on; fix with 'chmod o-w {path}' (and chown, if it is not yours)"
            )
    return warnings
