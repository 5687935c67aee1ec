"""
The built wheel exposes WOW's daemons to twistd.

Daphne once lost its twistd plugin when it moved to pyproject.toml; this test
builds a wheel, installs it into a fresh virtual environment and asks that
environment's twistd for its sub-commands.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig

from twisted.trial.unittest import TestCase

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The daemons the wheel must register with twistd.
DAEMONS = ["wow-node", "wow-ca"]
DAEMONS.append("wow-dns")


class WheelTests(TestCase):
    timeout = 300

    def test_wheel_registers_plugins(self) -> None:
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        wheels = os.path.join(work, "wheels")
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "-w", wheels, HERE],
            check=True, cwd=work, stdout=subprocess.DEVNULL,
        )
        [wheel] = [f for f in os.listdir(wheels) if f.endswith(".whl")]
        venv = os.path.join(work, "venv")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        python = os.path.join(venv, "bin", "python")
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
             os.path.join(wheels, wheel)],
            check=True, stdout=subprocess.DEVNULL,
        )
        # The wheel's dependencies come from the test environment, appended
        # after the fresh venv's own site-packages; the checkout itself is not
        # on the path, so only the installed wheel can provide the plugin.
        fresh_site = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        deps = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
        with open(os.path.join(fresh_site, "zz_test_deps.pth"), "w") as f:
            f.write("\n".join(deps) + "\n")
        result = subprocess.run(
            [python, "-c", "import sys; from twisted.scripts.twistd import run; "
             "sys.argv = ['twistd', '--help']; run()"],
            cwd=work, capture_output=True, text=True,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        for daemon in DAEMONS:
            self.assertIn(daemon, result.stdout)
        installed = subprocess.run(
            [python, "-c", "import wow, os; print(os.path.dirname(wow.__file__))"],
            cwd=work, capture_output=True, text=True, check=True,
        ).stdout.strip()
        self.assertTrue(installed.startswith(venv), installed)
