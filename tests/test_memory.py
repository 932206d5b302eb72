"""The memory actor's figures: pressure levels, hardware keys, and the fit check before a load."""

from __future__ import annotations

import json
import sys

import msgspec
import psutil
import pytest

from actors.memory.fit import check_fit, fit_problem, human_bytes, rank_share, weight_bytes
from actors.memory.hardware import cpu_model_from, gpu_cores_from_ioreg, hardware_info
from actors.memory.pressure import PressureReader, level_from_macos, level_from_psi
from actors.memory.reporter import memory_vitals
from actors.protocol.messages import ActorConfig, Vitals
from supervisor.config.load import HostfileError, parse_hostfile

GB = 10**9


def psi(some: float, full: float = 0.0) -> str:
    return (
        f"some avg10={some:.2f} avg60=1.00 avg300=0.50 total=123456\n"
        f"full avg10={full:.2f} avg60=0.00 avg300=0.00 total=789\n"
    )


@pytest.mark.parametrize(
    ("text", "level"),
    [
        (psi(0.0), "normal"),
        (psi(9.99, full=50.0), "normal"),  # "full" is not what decides
        (psi(10.0), "warn"),
        (psi(39.99), "warn"),
        (psi(40.0), "critical"),
        (psi(100.0), "critical"),
        ("full avg10=90.00 avg60=0 avg300=0 total=1\n", ""),  # no "some" line
        ("some avg60=1.00 total=3\n", ""),  # no avg10
        ("some avg10=x avg60=1.00\n", ""),
        ("", ""),
    ],
)
def test_linux_psi_maps_some_avg10_to_a_level(text, level):
    assert level_from_psi(text) == level


@pytest.mark.parametrize(
    ("value", "level"),
    [(1, "normal"), (2, "warn"), (4, "critical"), (0, ""), (3, ""), (None, "")],
)
def test_macos_pressure_level_maps_the_sysctl_value(value, level):
    assert level_from_macos(value) == level


def test_pressure_reader_reads_a_psi_file_and_says_nothing_without_one(tmp_path):
    if sys.platform == "darwin":
        pytest.skip("macOS reads the sysctl, not a PSI file")
    path = tmp_path / "memory"
    path.write_text(psi(12.5))
    assert PressureReader(psi_path=path).level() == "warn"
    assert PressureReader(psi_path=tmp_path / "absent").level() == ""


def test_memory_vitals_are_vitals_fields_and_add_up():
    figures = memory_vitals(PressureReader())
    vitals = msgspec.convert(figures, Vitals)  # every key is a Vitals field of its type
    assert vitals.mem_total == psutil.virtual_memory().total
    assert vitals.mem_used + vitals.mem_available == vitals.mem_total
    assert vitals.mem_used > 0 and vitals.swap_used >= 0
    assert vitals.pressure in ("normal", "warn", "critical", "")


def test_hardware_info_names_this_machine_in_strings():
    info = hardware_info()
    assert all(isinstance(v, str) and v for v in info.values())
    for key in ("chip", "cpu", "cpu_cores", "os", "python", "mlx", "mlx_lm", "mlx_supervisor"):
        assert key in info, key
    assert int(info["cpu_cores"]) >= 1
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    if sys.platform != "darwin":
        assert "gpu_cores" not in info  # the OS does not say: left out, not guessed


@pytest.mark.parametrize(
    ("text", "model"),
    [
        ("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nmodel name\t: other\n", "AMD EPYC 7B13"),
        ("processor\t: 0\nCPU part\t: 0xd0c\nModel\t: Raspberry Pi 5\n", "Raspberry Pi 5"),
        ("Hardware\t: BCM2835\n", "BCM2835"),
        ("processor\t: 0\nmodel name\t:\n", None),
    ],
)
def test_cpu_model_from_cpuinfo(text, model):
    assert cpu_model_from(text) == model


def test_gpu_cores_from_ioreg_output():
    out = '+-o AGXAcceleratorG14X  <class AGXAcceleratorG14X>\n    "gpu-core-count" = 38\n'
    assert gpu_cores_from_ioreg(out) == "38"
    assert gpu_cores_from_ioreg("nothing here") is None


# ------------------------------------------------------------------------- fit check


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1500, "1.5 kB"),
        (38_200_000_000, "38.2 GB"),
        (3 * 10**12, "3.0 TB"),
    ],
)
def test_human_bytes(n, text):
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    ("weights", "margin", "available", "expected"),
    [
        (36_200_000_000, 2 * GB, 38_200_000_000, None),  # exactly fits
        (36_200_000_000, 2 * GB, 60 * GB, None),
        (1_000, 0, 1_000, None),
        (
            36_200_000_000,
            2 * GB,
            21_400_000_000,
            "node mac2: model mlx-community/X needs 38.2 GB (weights 36.2 GB + margin 2.0 GB), "
            "21.4 GB available; choose a smaller model or free memory",
        ),
        (
            36_200_000_000,
            2 * GB,
            38_199_999_999,  # a byte short
            "node mac2: model mlx-community/X needs 38.2 GB (weights 36.2 GB + margin 2.0 GB), "
            "38.2 GB available; choose a smaller model or free memory",
        ),
    ],
)
def test_fit_problem_decides_and_says_why_in_one_line(weights, margin, available, expected):
    problem = fit_problem(
        node="mac2", model="mlx-community/X", weights=weights, margin=margin, available=available
    )
    assert problem == expected


def test_a_sharded_rank_counts_its_share_and_says_it_is_an_estimate():
    cfg = ActorConfig("g.rank1", "generation", "mac2", "", 1, rank=1, world_size=4)
    assert rank_share(10, 4) == 3  # rounded up: never under-counts
    assert check_fit(cfg, 80 * GB, model="big", available=23 * GB) is None  # 20 + 2 GB
    assert check_fit(cfg, 80 * GB, model="big", available=21 * GB) == (
        "node mac2: model big needs 22.0 GB (weights 20.0 GB, this rank's estimated 1/4 of "
        "80.0 GB + margin 2.0 GB), 21.0 GB available; use more ranks, a smaller model, "
        "or free memory"
    )


def test_check_fit_takes_the_margin_from_the_config_and_this_nodes_memory():
    free = psutil.virtual_memory().available
    tight = ActorConfig("a", "generation", "here", "", 1, memory_margin_bytes=free * 2)
    problem = check_fit(tight, 0, model="m")
    assert problem is not None and problem.startswith("node here: model m needs ")
    assert check_fit(ActorConfig("a", "generation", "here", "", 1), 1000, model="m") is None


def test_weight_bytes_counts_the_safetensors_files_only(tmp_path):
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"x" * 300)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"x" * 200)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_bytes(b"y" * 9999)
    assert weight_bytes(tmp_path) == 500


# ------------------------------------------------------------------------- hostfile key


def parse(document: dict):
    return parse_hostfile(json.dumps(document).encode(), "hostfile.json")


def test_memory_margin_bytes_is_a_hostfile_key_with_a_2_gb_default():
    assert parse({"hosts": [{"ssh": "localhost"}]}).memory_margin_bytes == 2 * GB
    spec = parse({"hosts": [{"ssh": "localhost"}], "memory_margin_bytes": 0})
    assert spec.memory_margin_bytes == 0
    assert ActorConfig("a", "generation", "n", "", 1).memory_margin_bytes == 2 * GB
    with pytest.raises(HostfileError) as info:
        parse({"hosts": [{"ssh": "localhost"}], "memory_margin_bytes": -1})
    assert str(info.value) == "hostfile.json: $.memory_margin_bytes: Expected int >= 0"
