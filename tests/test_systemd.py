"""systemd/: the units verify, score well on `systemd-analyze security`, and agree with the code.

systemd is not running here: `systemd-analyze --root` checks the units as installed in a scratch
root (the system's own unit files copied in, the ExecStart binary present).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from evaluator.errors import EXIT_CONFIG
from tests.conftest import ROOT

SYSTEMD = ROOT / "systemd"
UNIT = "evaluator@.service"
EXPOSURE_TARGET = 2.5

if shutil.which("systemd-analyze") is None:
    if os.environ.get("EVALUATOR_REQUIRE_SYSTEMD"):  # set by .ci/run, which installs systemd's tools
        pytest.fail("systemd-analyze is required (apt-get install systemd)", pytrace=False)
    pytestmark = pytest.mark.skip(reason="systemd-analyze is not installed")


def make_root(tmp_path: Path, drop_ins: tuple[str, ...] = (), unit_text: str | None = None) -> Path:
    root = tmp_path / "root"
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for path in Path("/usr/lib/systemd/system").iterdir():
        if path.is_file():
            shutil.copy(path, units / path.name)
    binary = root / "opt/evaluator/bin/evaluator"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    local = root / "etc/systemd/system"
    local.mkdir(parents=True)
    (local / UNIT).write_text(unit_text if unit_text is not None else (SYSTEMD / UNIT).read_text())
    if drop_ins:
        (local / f"{UNIT}.d").mkdir()
        for name in drop_ins:
            shutil.copy(SYSTEMD / name, local / f"{UNIT}.d" / name)
    return root


def verify(root: Path) -> list[str]:
    """systemd-analyze verify's complaints about our units (it exits 0 on some of them)."""
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "evaluator@job1.service"],
                            capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    ours = [line for line in lines if "evaluator" in line]
    if result.returncode != 0:
        ours.append(f"exit status {result.returncode}")
    return ours


def exposure(root: Path) -> float:
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--root={root}",
                             "evaluator@job1.service"], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for evaluator@job1\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@pytest.mark.parametrize("drop_ins", [(), ("gpu.conf",), ("gpu.conf", "network.conf"), ("outputs.conf",)],
                         ids=["unit", "unit+gpu", "unit+gpu+network", "unit+outputs"])
def test_units_verify(tmp_path: Path, drop_ins: tuple[str, ...]) -> None:
    assert verify(make_root(tmp_path, drop_ins)) == []


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo in the unit is reported."""
    broken = (SYSTEMD / UNIT).read_text().replace("Type=notify", "Type=notifyy")
    assert any("Failed to parse service type" in line for line in verify(make_root(tmp_path, unit_text=broken)))


@pytest.mark.parametrize(("drop_ins", "target"), [((), EXPOSURE_TARGET), (("gpu.conf",), EXPOSURE_TARGET)],
                         ids=["cpu", "gpu"])
def test_security_exposure(tmp_path: Path, drop_ins: tuple[str, ...], target: float,
                           capsys: pytest.CaptureFixture[str]) -> None:
    score = exposure(make_root(tmp_path, drop_ins))
    with capsys.disabled():
        print(f"\n  systemd-analyze security --offline=yes {'+'.join((UNIT, *drop_ins))}: exposure {score}")
    assert score <= target


def settings(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)\s*(s|min)?", value)
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_the_unit_agrees_with_the_code() -> None:
    unit = settings(SYSTEMD / UNIT)
    assert unit["Type"] == ["notify"]
    assert unit["RestartPreventExitStatus"] == [str(EXIT_CONFIG)]  # configuration errors: no restart loop
    assert unit["Restart"] == ["on-failure"] and "StartLimitBurst" in unit
    (exec_start,) = unit["ExecStart"]
    # $MODEL_DIR unbraced: empty (a pool instance with EVALUATOR_ARGS=--root DIR) gives no argument
    assert exec_start.startswith("/opt/evaluator/bin/evaluator watch $MODEL_DIR --task ${TASK}")
    assert "--log-format json" in exec_start and "--wait-for-dir" in exec_start
    grace = float(re.search(r"--stop-grace (\d+)", exec_start).group(1))  # type: ignore[union-attr]
    assert seconds(unit["TimeoutStopSec"][0]) > grace  # the evaluation in progress can finish before SIGKILL
    assert seconds(unit["WatchdogSec"][0]) >= 10
    assert unit["StateDirectory"] == ["evaluator"]
    assert "/var/lib/evaluator/" in unit["Environment"][0]
    # The model directory is read-only to the unit: summaries and kept checkpoints go to its state
    # directory, per instance, through the environment variables `watch` reads for those options.
    outputs = dict(value.split("=", 1) for value in unit["Environment"])
    assert outputs["EVALUATOR_SUMMARY_DIR"] == "/var/lib/evaluator/%i/eval"
    assert outputs["EVALUATOR_EXPORT_DIR"] == "/var/lib/evaluator/%i/export"
    from evaluator.cli import watch

    envvars = {param.envvar for param in watch.params}
    assert {"EVALUATOR_SUMMARY_DIR", "EVALUATOR_EXPORT_DIR"} <= envvars
    example = settings(SYSTEMD / "evaluator.env.example")
    assert {"MODEL_DIR", "TASK"} <= set(example)


def test_the_gpu_drop_in_only_adds_device_access() -> None:
    gpu = settings(SYSTEMD / "gpu.conf")
    assert set(gpu) == {"PrivateDevices", "DevicePolicy", "DeviceAllow"}
    assert gpu["DevicePolicy"] == ["closed"]
    assert all(value.startswith("char-nvidia") for value in gpu["DeviceAllow"])
