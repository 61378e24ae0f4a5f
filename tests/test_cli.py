import subprocess
import sys

from harness import __version__


def run(*args):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=120)


def test_version():
    out = run("--version")
    assert out.returncode == 0 and __version__ in out.stdout


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0 and "selftest" in out.stdout


def test_unknown_command_exits_2():
    out = run("frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_unknown_option_exits_2():
    out = run("selftest", "--nope")
    assert out.returncode == 2 and "--nope" in out.stderr


def test_no_command_exits_2():
    assert run().returncode == 2
