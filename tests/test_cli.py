"""The CLI as a package: one module per command group, light client commands, the console apart."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tuneforge.services import SERVICE_NAMES

pytestmark = pytest.mark.slow  # the health check runs against the session server


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, check=False)


def test_health_checks_every_service_without_importing_torch_or_the_services(platform_server) -> None:
    probe = (
        "import sys\n"
        "from tuneforge.cli import main\n"
        "code = main(['health', '--address', sys.argv[1]])\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'ray', 'tuneforge.curation.server') if m in sys.modules)\n"
        "print('imported:', ','.join(heavy) or 'nothing heavy')\n"
        "sys.exit(code)\n"
    )
    done = _python(probe, platform_server.address)
    assert done.returncode == 0, done.stdout + done.stderr
    for names in SERVICE_NAMES.values():
        for name in names:
            assert f"{name:40s} SERVING" in done.stdout
    assert "imported: nothing heavy" in done.stdout


def test_the_light_service_table_names_what_each_component_serves() -> None:
    from tuneforge.services import COMPONENTS

    assert set(SERVICE_NAMES) == set(COMPONENTS)
    for name, component in COMPONENTS.items():
        assert SERVICE_NAMES[name] == tuple(component.service_names), name


def test_the_demo_and_console_do_not_import_the_cli() -> None:
    done = _python(
        "import sys, tuneforge.demo, tuneforge.console\n"
        "print(sorted(m for m in sys.modules if m == 'tuneforge.cli' or m.startswith('tuneforge.cli.')))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_command_group_is_registered_once() -> None:
    from tuneforge.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(commands) == {
        "serve", "up", "demo", "health", "files", "datasets", "jobs", "generate", "chat", "evals", "adapters",
        "models", "keys", "feedback", "console", "selfinstruct",
    }  # fmt: skip
    help_text = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert all(name in help_text for name in commands)
