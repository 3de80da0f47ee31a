"""Site profiles: the examples load, broken profiles name file and key, Parsl config from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from hillwalker.config import ConfigError
from hillwalker.execution import Execution, gpu_groups
from hillwalker.sites import TaskTooLongError, load_site, walltime_seconds

EXAMPLES = Path(__file__).parents[2] / "examples" / "sites"


@pytest.mark.parametrize("name", ["local", "cpu-cluster", "gpu-cluster"])
def test_the_examples_load(name: str) -> None:
    site = load_site(EXAMPLES / f"{name}.yaml")
    assert site.name == name
    assert site.cp2k.command[-1] == "cp2k.psmp"


def test_no_profile_means_this_machine() -> None:
    site = load_site(None)
    assert {site.task(kind).provider for kind in ("md", "dft", "train")} == {"local"}
    assert site.cp2k.command == ["cp2k.psmp"]


def problems(tmp_path: Path, text: str) -> str:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_site(path)
    message = str(info.value)
    assert str(path) in message  # every error names the file
    return message


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ("tasks:\n  dft:\n    partitoin: cpu\n", "tasks.dft.partitoin", "unknown key"),
        ("tasks:\n  md:\n    cores_per_task: -2\n", "tasks.md.cores_per_task", "greater than"),
        ("tasks:\n  train:\n    walltime: 2h\n", "tasks.train.walltime", "[D-]HH:MM:SS"),
        ("tasks:\n  train:\n    walltime: '01:75:00'\n", "tasks.train.walltime", "HH:MM:SS"),
        (
            "tasks:\n  dft:\n    provider: slurm\n    walltime: '00:30:00'\n"
            "    task_walltime: '01:00:00'\n",
            "tasks.dft",
            "longer than the block walltime 00:30:00",
        ),
        ("tasks:\n  md:\n    cp2k: {command: [cp2k.psmp]}\n", "tasks", "belongs to the dft"),
        ("tasks:\n  dft:\n    blocks: {min: 3, max: 2}\n", "tasks.dft.blocks", "min (3)"),
        ("tasks:\n  dft:\n    cp2k: {command: []}\n", "tasks.dft.cp2k.command", "at least 1"),
        ("retries: -1\n", "retries", "greater than or equal to 0"),
        ("tasks:\n  md:\n    provider: pbs\n", "tasks.md.provider", "'local' or 'slurm'"),
        (
            "tasks:\n  md:\n    scheduler_options: ['--mem=4G']\n",
            "tasks.md.scheduler_options",
            "#SBATCH",
        ),
    ],
)
def test_broken_profiles_name_file_and_key(tmp_path: Path, text: str, key: str, why: str) -> None:
    message = problems(tmp_path, text)
    assert f": {key}: " in message, message
    assert why in message, message


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    assert "line 2" in problems(tmp_path, "tasks:\n\tdft: {}\n")


def test_walltime_format() -> None:
    assert walltime_seconds("01:30:00") == 5400
    assert walltime_seconds("2-00:00:01") == 2 * 86400 + 1
    for bad in ("90", "1:30", "00:60:00", "-01:00:00"):
        with pytest.raises(ValueError, match="HH:MM:SS"):
            walltime_seconds(bad)


def test_a_task_that_cannot_fit_is_refused_with_the_key_to_change() -> None:
    site = load_site(EXAMPLES / "cpu-cluster.yaml")
    site.check_task_fits("dft", 4 * 3600)
    with pytest.raises(TaskTooLongError, match=r"tasks\.dft\.walltime=04:00:00"):
        site.check_task_fits("dft", 4 * 3600 + 1)
    with pytest.raises(ValueError, match="unknown task kind"):
        site.check_task_fits("labels", 1)


def test_cluster_profile_becomes_parsl_executors(tmp_path: Path) -> None:
    """The Parsl objects built (not started) from the example: one executor per SLURM kind."""
    config = Execution(load_site(EXAMPLES / "cpu-cluster.yaml"), run_dir=tmp_path).parsl_config()
    executors = {ex.label: ex for ex in config.executors}
    assert set(executors) == {"slurm-md", "slurm-dft", "slurm-train"}
    assert config.retries == 2
    assert config.max_idletime == 120
    assert config.run_dir == str(tmp_path / ".hillwalker" / "parsl")
    dft = executors["slurm-dft"]
    assert dft.max_workers_per_node == 4  # 64 cores // 16 per single point
    provider = dft.provider
    assert (provider.partition, provider.account, provider.qos) == ("cpu", "my-project", "normal")
    assert provider.walltime == "04:00:00"
    assert provider.cores_per_node == 64
    assert provider.max_blocks == 4
    assert provider.status_polling_interval == 60
    assert provider.exclusive is False
    lines = provider.worker_init.splitlines()
    assert lines[0].startswith("export PATH=") and "bin" in lines[0]
    assert "module load CP2K/2023.1-foss-2022b" in lines
    assert executors["slurm-train"].max_workers_per_node == 1


def test_gpu_profile_pins_one_gpu_group_per_worker(tmp_path: Path) -> None:
    config = Execution(load_site(EXAMPLES / "gpu-cluster.yaml"), run_dir=tmp_path).parsl_config()
    executors = {ex.label: ex for ex in config.executors}
    assert executors["slurm-md"].available_accelerators == ["0", "1", "2", "3"]
    assert executors["slurm-md"].max_workers_per_node == 4
    assert executors["slurm-train"].available_accelerators == ["0"]
    assert "#SBATCH --gpus-per-node=4" in executors["slurm-md"].provider.scheduler_options
    assert gpu_groups(4, 2) == ["0,1", "2,3"]
    assert gpu_groups(8, 3) == ["0,1,2", "3,4,5"]
