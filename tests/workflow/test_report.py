"""`hillwalker report` / `compare`: the FES against PLUMED's sum_hills, the page in Chromium.

The FES test drives the real PLUMED kernel (well-tempered METAD through ASE) and its own
``plumed sum_hills``. The page tests build a real tiny campaign once (module fixture, slow),
open its report in headless Chromium, check each figure's box in a screenshot and every marked
number against ``status --json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from ase import Atoms, units
from ase.calculators.lj import LennardJones
from ase.calculators.plumed import Plumed
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

from hillwalker.engines.plumed import read_hills
from hillwalker.engines.plumed_kernel import find_kernel, plumed_tool_env, use_kernel
from hillwalker.fes import biasfactor, free_energy, grid_axis, to_zero
from hillwalker.material_templates import new_from_template

HILLWALKER = str(Path(sys.executable).parent / "hillwalker")
CHROMIUM = shutil.which("chromium")

# ------------------------------------------------------------------------------ FES vs PLUMED

METAD = "metad: METAD ARG=d SIGMA=0.01 HEIGHT=0.8 PACE=5 BIASFACTOR=6 TEMP=80"


def write_hills(tmp_path: Path, steps: int = 150) -> Path:
    """Langevin MD of an LJ Ar trimer under well-tempered METAD on a distance (nm)."""
    use_kernel()
    atoms = Atoms("Ar3", positions=[[0, 0, 0], [3.8, 0, 0], [1.9, 3.2, 0]])
    hills = tmp_path / "HILLS"
    lines = ["d: DISTANCE ATOMS=1,2", f"{METAD} FILE={hills}"]
    lj = LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0)
    with Plumed(
        lj, lines, timestep=4 * units.fs, atoms=atoms, kT=units.kB * 80,
        log=str(tmp_path / "plumed.log"),
    ) as calc:  # fmt: skip
        atoms.calc = calc
        thermalize_momenta(atoms, temperature_K=80, rng=np.random.default_rng(3))
        dyn = Langevin(
            atoms, 4 * units.fs, temperature_K=80, friction=0.02, fixcm=False,
            rng=np.random.default_rng(4),
        )  # fmt: skip
        dyn.run(steps)
    return hills


def sum_hills(hills: Path, lo: float, hi: float, bins: int, *extra: str) -> np.ndarray:
    """(grid, free energy) columns of the kernel's own ``plumed sum_hills``."""
    tool = find_kernel().parent.parent / "bin" / "plumed"
    if not tool.is_file():
        pytest.skip(f"no plumed command-line tool beside the kernel ({tool})")
    out = hills.parent / f"fes{'-'.join(extra)}.dat"
    subprocess.run(
        [str(tool), "sum_hills", "--hills", str(hills), "--min", str(lo), "--max", str(hi),
         "--bin", str(bins), "--outfile", str(out), "--fmt", "%24.16f", *extra],
        env=plumed_tool_env(), cwd=hills.parent, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return np.loadtxt(out)[:, :2]


def test_fes_equals_plumed_sum_hills(tmp_path: Path) -> None:
    hills_path = write_hills(tmp_path)
    hills = read_hills(hills_path)
    assert len(hills) == 30
    assert biasfactor([METAD]) == 6.0 and np.all(hills.biasf == 6.0)
    lo, hi, bins = 0.25, 0.65, 400
    axis = grid_axis(lo, hi, bins)
    ours = free_energy(hills, [axis])
    plumed = sum_hills(hills_path, lo, hi, bins)
    np.testing.assert_allclose(axis, plumed[:, 0], atol=1e-12)
    difference = np.max(np.abs(ours - plumed[:, 1]))
    print(f"FES vs plumed sum_hills: max |difference| {difference:.2e} kJ/mol")
    assert difference < 1e-6
    # a test that could not fail: a surface some kJ/mol deep, where the well-tempered factor
    # (6/5 here) matters
    assert ours.min() < -3.0
    plain = free_energy(type(hills)(**{**hills.__dict__, "biasf": -np.ones(len(hills))}), [axis])
    assert np.max(np.abs(plain - plumed[:, 1])) > 0.1
    shifted = sum_hills(hills_path, lo, hi, bins, "--mintozero")
    assert np.max(np.abs(to_zero(ours) - shifted[:, 1])) < 1e-6


# ------------------------------------------------------------------------- nothing to report


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HILLWALKER, *map(str, args)], capture_output=True, text=True, timeout=600
    )


def test_report_of_a_directory_that_is_no_campaign(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a campaign")
    before = sorted(tmp_path.rglob("*"))
    for args in (["report", tmp_path], ["compare", tmp_path, "-o", tmp_path / "c.html"]):
        out = run_cli(*args)
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines() == [
            f"error: {tmp_path}: not a campaign directory (no campaign.yaml)"
        ]
    assert sorted(tmp_path.rglob("*")) == before


def test_report_of_a_campaign_without_a_model(tmp_path: Path) -> None:
    root = tmp_path / "c"
    new_from_template(root, "mil53-al")
    before = sorted(tmp_path.rglob("*"))
    out = run_cli("report", root, "-o", tmp_path / "r.html")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert "no model yet" in out.stderr and f"hillwalker run {root}" in out.stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_errors_section_shows_test_sets_when_recorded(tmp_path: Path) -> None:
    """Per-generation test-set errors (a ``test_sets`` dict in status) get lines and cells."""
    from hillwalker.report import CampaignData
    from hillwalker.report_sections import errors
    from hillwalker.state import CampaignDir

    def generation(g: int, scale: float, tests: bool) -> dict[str, Any]:
        scores = {k: scale * v for k, v in
                  {"energy_rmse_mev_per_atom": 5.0, "force_rmse_mev_per_ang": 90.0,
                   "stress_rmse_gpa": 0.3}.items()}  # fmt: skip
        return {
            "generation": g, "validation": scores, "single_points_done": 4,
            "single_points_failed": 0, "training_seconds": 12.5,
            **({"test_sets": {"np-lp": {**scores, "n_frames": 7}}} if tests else {}),
        }  # fmt: skip

    with_tests = {"generations": [generation(0, 2.0, True), generation(1, 1.0, True)]}
    page = errors(CampaignData(CampaignDir(tmp_path), with_tests))
    assert page.count('id="fig-errors-img"') == 1 and "No test sets" not in page
    assert check_numbers(page, with_tests) == 2 * (1 + 3 + 3 + 3)
    assert 'data-key="generations.1.test_sets.np-lp.force_rmse_mev_per_ang"' in page
    without = {"generations": [generation(0, 2.0, False)]}
    page = errors(CampaignData(CampaignDir(tmp_path), without))
    assert "test_sets" not in page and "No test sets scored yet" in page
    assert check_numbers(page, without) == 1 + 3 + 3


# ---------------------------------------------------------------------------- a real campaign

TINY = {
    "name": "tiny",
    "material": {
        "structure": "structure.cif",
        "level": "levels/xtb.inp",
        "plumed": "plumed.dat",
        "nequip": "nequip.yaml",
    },
    "generation0": {"frames": 4, "position_sigma": 0.03, "cell_strain": 0.02},
    "walkers": {
        "count": 2,
        "ensemble": "npt",
        "temperature": 300.0,
        "timestep": 0.5,
        "steps": 40,
        "bias": "shared",
    },
    "training": {
        "mode": "warm",
        "epochs": 3,
        "warm_epochs": 2,
        "validation_fraction": 0.25,
        "overrides": {"num_features": 8, "batch_size": 2},
    },
    "stop": {"generations": 1},
    "labeling": {"timeout": 600.0},
    "seed": 7,
}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hillwalker.runner import run_campaign

    root = tmp_path_factory.mktemp("report") / "tiny"
    new_from_template(root, "mil53-al")
    (root / "campaign.yaml").write_text(yaml.safe_dump(TINY))
    # a hill every 10 steps, so that 40 steps leave a bias (the template's PACE is 50)
    plumed = root / "plumed.dat"
    plumed.write_text(plumed.read_text().replace("PACE=50", "PACE=10"))
    run_campaign(root)
    assert len(read_hills(root / "generations/001/hills")) == 8
    return root


def status_json(root: Path) -> dict[str, Any]:
    out = run_cli("status", root, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


class MarkedCells(HTMLParser):
    """Every element with ``data-key``: (key, exact JSON value, shown text)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[str, Any, str]] = []
        self._open: tuple[str, Any] | None = None
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "data-key" in a:
            self._open = (str(a["data-key"]), json.loads(a["data-value"] or "null"))
            self.cells.append((*self._open, ""))
        if tag == "img":
            self.images.append(a)

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            key, value, text = self.cells[-1]
            self.cells[-1] = (key, value, text + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._open = None


def lookup(status: Any, key: str) -> Any:
    value = status
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def check_numbers(page: str, status: dict[str, Any], *, prefix: str = "") -> int:
    """Every marked cell shows the value ``status --json`` has at its key."""
    parser = MarkedCells()
    parser.feed(page)
    for key, value, text in parser.cells:
        expected = lookup(status, key[len(prefix) :] if prefix else key)
        assert value == expected, key
        if isinstance(expected, float):
            assert float(text) == pytest.approx(expected, rel=1e-3, abs=1e-9), key
        elif isinstance(expected, bool | int):
            assert text == str(expected), key
        elif expected is None:
            assert text == "–", key
        else:
            assert text == str(expected), key
    return len(parser.cells)


def chromium(*args: str, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH")
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--force-device-scale-factor=1", "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


MEASURE = """<script>
window.addEventListener('load', () => {
  const boxes = [...document.querySelectorAll('figure img')].map(img => {
    const r = img.getBoundingClientRect();
    return {id: img.id, x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height,
            natural: img.naturalWidth};
  });
  const pre = document.createElement('pre');
  pre.id = 'boxes';
  pre.textContent = JSON.stringify({boxes, height: document.documentElement.scrollHeight});
  document.body.appendChild(pre);
});
</script></body>"""


def open_in_chromium(page: Path, tmp_path: Path, figure_ids: list[str]) -> str:
    """Load the page: no console errors, every figure decoded, laid out and non-blank."""
    loaded = chromium("--dump-dom", page.as_uri())
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    errors = [
        line for line in loaded.stderr.splitlines() if "CONSOLE" in line or "net::ERR" in line
    ]
    assert not errors
    # a copy with a script that writes each figure's box into the DOM (the page itself has none)
    probe = tmp_path / f"probe-{page.name}"
    probe.write_text(page.read_text().replace("</body>", MEASURE))
    dom = chromium("--dump-dom", "--window-size=1300,900", probe.as_uri()).stdout
    layout = json.loads(dom.split('<pre id="boxes">')[1].split("</pre>")[0])
    boxes = {b["id"]: b for b in layout["boxes"]}
    assert sorted(boxes) == sorted(f"{i}-img" for i in figure_ids)
    shot = tmp_path / f"{page.stem}.png"
    height = int(layout["height"]) + 50
    chromium(f"--screenshot={shot}", f"--window-size=1300,{height}", probe.as_uri())
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[0] >= layout["height"]
    for name, box in boxes.items():
        assert box["natural"] > 0 and box["w"] > 100 and box["h"] > 100, name
        x, y, w, h = (round(box[k]) for k in ("x", "y", "w", "h"))
        crop = image[y : y + h, x : x + w].reshape(-1, 3)
        assert len(np.unique(crop, axis=0)) > 20, f"{name} is blank in the screenshot"
    return loaded.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first test builds the campaign: 106 s (2026-12-02, 1 core busy)
def test_report_of_a_campaign_in_chromium(campaign: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    out = run_cli("report", campaign)
    seconds = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    page = campaign / "report.html"
    assert page.is_file() and "http" not in page.read_text().replace("http-equiv", "")
    status = status_json(campaign)
    dom = open_in_chromium(page, tmp_path, REPORT_FIGURES)
    n = check_numbers(dom, status)
    gens = len(status["generations"])
    # every generation's errors, the totals, the CV range
    assert n >= 6 + 3 + 6 * gens + 2 * len(status["cv_range"])
    print(f"report built in {seconds:.1f} s; {n} numbers checked")


REPORT_FIGURES = [
    "fig-errors",
    "fig-parity",
    "fig-cv-coverage",
    "fig-cv-series-0",
    "fig-fes",
    "fig-single-points",
    "fig-wall-time",
]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compare_two_campaigns_in_chromium(campaign: Path, tmp_path: Path) -> None:
    other = tmp_path / "copy"
    shutil.copytree(campaign, other, ignore=shutil.ignore_patterns("lock", "parsl"))
    target = tmp_path / "compare.html"
    out = run_cli("compare", campaign, other, "-o", target)
    assert out.returncode == 0, out.stderr
    dom = open_in_chromium(target, tmp_path, ["fig-compare-errors", "fig-compare-coverage-0"])
    status = [status_json(campaign), status_json(other)]
    parser = MarkedCells()
    parser.feed(dom)
    assert {k.split(".", 1)[0] for k, _, _ in parser.cells} == {"0", "1"}
    for i in (0, 1):
        assert check_numbers(_only(dom, f"{i}."), status[i], prefix=f"{i}.") >= 5


def _only(page: str, prefix: str) -> str:
    """The page with only the marked cells whose key starts with ``prefix`` still marked."""
    other = "1." if prefix == "0." else "0."
    return page.replace(f'data-key="{other}', 'data-other="')


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_report_reads_only(campaign: Path, tmp_path: Path) -> None:
    """A report changes nothing in the campaign but the page it writes (here: elsewhere)."""
    before = {p: p.stat().st_mtime_ns for p in campaign.rglob("*") if p.is_file()}
    out = run_cli("report", campaign, "-o", tmp_path / "r.html")
    assert out.returncode == 0, out.stderr
    after = {p: p.stat().st_mtime_ns for p in campaign.rglob("*") if p.is_file()}
    assert after == before
    assert os.path.getsize(tmp_path / "r.html") > 10_000
