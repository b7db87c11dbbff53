"""The command line: python -m fastconv info / demo."""

import subprocess
import sys

import fastconv


def _run(*args):
    return subprocess.run([sys.executable, "-m", "fastconv", *args], capture_output=True, text=True, timeout=300)


def test_info():
    r = _run("info")
    assert r.returncode == 0, r.stderr
    assert "built_with_cuda" in r.stdout and "direct" in r.stdout
    info = fastconv.build_info()
    assert info["extension_loaded"] and "direct" in info["algorithms"]["cpu"]


def test_demo_cpu_parity():
    r = _run("demo", "--device", "cpu")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "parity: OK" in r.stdout


def test_bad_command_fails():
    r = _run("frobnicate")
    assert r.returncode != 0
