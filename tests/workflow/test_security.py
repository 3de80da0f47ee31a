"""The security review's promises (docs/security.md), each checked on the real command line.

No campaign runs here: ``validate`` and ``run`` must refuse before anything starts.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

from hillwalker.cli import app
from hillwalker.material_templates import new_from_template
from hillwalker.security import material_outside
from hillwalker.state import CampaignDir

ROOT = Path(__file__).resolve().parents[2]


class _Out:
    def __init__(self, result: Result) -> None:
        self.returncode = result.exit_code
        self.stdout, self.stderr = result.stdout, result.stderr


def _cli(*args: str) -> _Out:
    """The real command line, in this process (each `hillwalker` process would import torch)."""
    return _Out(CliRunner().invoke(app, list(args)))


def _campaign(tmp_path: Path) -> Path:
    root = tmp_path / "c"
    new_from_template(root, "mil53-al")
    return root


def _set_material(root: Path, key: str, value: str) -> None:
    config = yaml.safe_load((root / "campaign.yaml").read_text())
    config["material"][key] = value
    (root / "campaign.yaml").write_text(yaml.safe_dump(config))


# --- campaign.yaml and site files are data ----------------------------------------------------


def test_a_python_object_tag_is_refused_and_never_constructed(tmp_path: Path) -> None:
    root = _campaign(tmp_path)
    pwned = tmp_path / "pwned"
    text = (root / "campaign.yaml").read_text()
    (root / "campaign.yaml").write_text(
        text + f'extra: !!python/object/apply:os.system ["touch {pwned}"]\n'
    )
    site = tmp_path / "site.yaml"
    site.write_text(f'name: !!python/object/apply:os.system ["touch {pwned}"]\n')
    for args in (
        ("validate", str(root)),
        ("run", str(root)),
        ("run", str(root), "--site", str(site)),
    ):
        out = _cli(*args)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert "malformed YAML: could not determine a constructor" in out.stderr, args
        assert "python/object/apply:os.system" in out.stderr and "Traceback" not in out.stderr
    assert "campaign.yaml" in _cli("validate", str(root)).stderr
    (root / "campaign.yaml").write_text(text)
    out = _cli("validate", str(root), "--site", str(site))
    assert out.returncode == 1 and f"{site}" in out.stderr and "could not determine" in out.stderr
    assert not pwned.exists()


def _calls(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every call that evaluates code or starts a shell."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name in {"eval", "exec", "os.system", "os.popen", "yaml.load", "yaml.unsafe_load"}:
            found.append((node.lineno, name))
        for kw in node.keywords:
            if kw.arg == "shell" and not (
                isinstance(kw.value, ast.Constant) and kw.value.value is False
            ):
                found.append((node.lineno, f"{name}(shell=...)"))
    return found


def test_no_eval_and_no_shell_in_workflow_or_engines() -> None:
    """User strings (campaign.yaml, file names, CP2K commands) go to argv lists, never a shell."""
    files = sorted((ROOT / "workflow").rglob("*.py")) + sorted((ROOT / "engines").rglob("*.py"))
    assert len(files) > 30
    found = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in files
        for line, what in _calls(ast.parse(path.read_text(), str(path)))
    ]
    assert found == []


def test_the_scanner_finds_what_it_looks_for() -> None:
    code = (
        "import os, subprocess, yaml\n"
        "eval(x)\nos.system(x)\nsubprocess.run(x, shell=True)\nyaml.load(t)\n"
        "level.force_eval(x)\nsubprocess.run([x], shell=False)\nyaml.safe_load(t)\n"
    )
    assert [w for _, w in _calls(ast.parse(code))] == [
        "eval",
        "os.system",
        "subprocess.run(shell=...)",
        "yaml.load",
    ]


# --- every path stays inside the campaign directory -------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [
        ("structure", "/etc/passwd"),
        ("level", "../elsewhere/xtb.inp"),
        ("plumed", "bias/../../plumed.dat"),
        ("nequip", "~/nequip.yaml"),
    ],
)
def test_a_material_path_outside_the_campaign_is_warned(
    tmp_path: Path, key: str, value: str
) -> None:
    """An input outside the directory is read, not written: warned, named by file and key."""
    root = _campaign(tmp_path)
    _set_material(root, key, value)
    out = _cli("validate", str(root))
    expected = (
        f"warning: {root / 'campaign.yaml'}: material.{key}: {value!r} is outside the campaign "
        "directory (an absolute path, '..' or '~'): the campaign reads it but is not "
        "self-contained; copy the file into the directory to share or move the campaign"
    )
    assert out.stderr.splitlines().count(expected) == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_a_campaign_that_reads_the_templates_files_validates(tmp_path: Path) -> None:
    """The main job's way: material files shared with the template, by '../' paths."""
    root = _campaign(tmp_path)
    template = Path(__file__).resolve().parents[2] / "templates" / "mil53-al"
    for key, name in (("level", "levels/xtb.inp"), ("plumed", "plumed.dat")):
        _set_material(root, key, os.path.relpath(template / name, root))
    out = _cli("validate", str(root))
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("is outside the campaign directory") == 2


def test_a_smoke_campaign_may_name_its_own_campaigns_files(tmp_path: Path) -> None:
    """`run --smoke` writes DIR/.hillwalker/smoke/campaign.yaml with DIR's files by absolute path."""
    root = (tmp_path / "c").resolve()
    smoke = CampaignDir(root).smoke
    material = {"structure": str(root / "structure.cif"), "level": str(tmp_path / "x.inp")}
    warned = material_outside(smoke, material)
    assert len(warned) == 1 and "material.level" in warned[0]
    # the same absolute path from a campaign that is not a smoke run: warned
    assert len(material_outside(root, {"structure": str(root / "structure.cif")})) == 1


def test_a_campaign_others_can_write_to_is_warned(tmp_path: Path) -> None:
    root = _campaign(tmp_path)
    out = _cli("validate", str(root))
    assert out.returncode == 0 and "warning:" not in out.stderr, out.stderr
    root.chmod(0o777)
    lock = root / ".hillwalker" / "lock"
    lock.parent.mkdir()
    lock.write_text("{}")
    lock.chmod(0o666)
    os.chown(root / "campaign.yaml", 65534, 65534) if os.geteuid() == 0 else None
    out = _cli("validate", str(root))
    assert out.returncode == 0, out.stderr  # a warning, not a refusal
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning: ")]
    assert f"warning: {root}: world-writable (mode 777)" in warnings[0]
    assert f"chmod o-w {root}" in warnings[0]
    assert any(w.startswith(f"warning: {lock}: world-writable (mode 666)") for w in warnings)
    if os.geteuid() == 0:
        assert any(
            w.startswith(f"warning: {root / 'campaign.yaml'}: owned by another user (uid 65534")
            for w in warnings
        )
    assert len(warnings) == (3 if os.geteuid() == 0 else 2)
