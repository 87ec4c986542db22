"""`tuneforge chat` as a real process against the session's server: Ctrl-C stops an answer and the
conversation goes on, server errors are shown and the session goes on, an unknown adapter ends it at once."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time

from conftest import ACME_KEY

from tuneforge.platform import BackgroundServer


def _chat(platform_server: BackgroundServer, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tuneforge.cli",
        "chat",
        "--address",
        platform_server.address,
        "--api-key",
        ACME_KEY,
        *options,
    ]


def _chat_piped(platform_server: BackgroundServer, lines: str, *options: str) -> subprocess.CompletedProcess[str]:
    """A chat whose input is piped in (no terminal): what it printed and its exit status."""
    return subprocess.run(_chat(platform_server, *options), input=lines, capture_output=True, text=True, timeout=120)


class Terminal:
    """A process on a pseudo-terminal: what it writes is collected, keys are typed into it."""

    def __init__(self, command: list[str]) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        self.output = ""

    def read_until(self, text: str, start: int = 0, timeout: float = 120) -> int:
        """Reads until `text` appears after position `start`; returns where it ends."""
        deadline = time.monotonic() + timeout
        while (found := self.output.find(text, start)) < 0:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} never came; the terminal shows:\n{self.output[-3000:]}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the process ended and closed the terminal
                    chunk = b""
                assert chunk, f"the process ended before {text!r}; the terminal shows:\n{self.output[-3000:]}"
                self.output += chunk.decode(errors="replace")
        return found + len(text)

    def read_some(self, start: int, count: int, timeout: float = 120) -> None:
        """Waits until at least `count` characters arrived after `start`."""
        deadline = time.monotonic() + timeout
        while len(self.output) - start < count:
            assert time.monotonic() < deadline, f"no answer streamed; the terminal shows:\n{self.output[-3000:]}"
            ready, _, _ = select.select([self.master], [], [], 1)
            if ready:
                self.output += os.read(self.master, 4096).decode(errors="replace")

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> int:
        try:
            return self.process.wait(60)
        finally:
            os.close(self.master)


def test_ctrl_c_stops_an_answer_and_the_conversation_goes_on(platform_server: BackgroundServer) -> None:
    terminal = Terminal(_chat(platform_server, "--max-tokens", "1000", "--temperature", "1.0"))
    try:
        position = terminal.read_until("> ")
        for turn in ("Tell me a long story.", "And another one."):
            terminal.type(turn + "\n")
            position = terminal.read_until(turn, position)
            terminal.read_some(position, 40)  # the answer is streaming
            terminal.process.send_signal(signal.SIGINT)
            position = terminal.read_until("[answer stopped]", position)
            position = terminal.read_until("> ", position)  # the same session asks for the next line
            assert terminal.process.poll() is None
        terminal.type("\x04")  # Ctrl-D at an empty prompt ends the chat
        assert terminal.close() == 0, terminal.output[-3000:]
    finally:
        if terminal.process.poll() is None:
            terminal.process.kill()
    assert "Traceback" not in terminal.output and "KeyboardInterrupt" not in terminal.output, terminal.output


def test_server_errors_are_shown_and_the_session_goes_on(platform_server: BackgroundServer) -> None:
    # every turn is refused by the server (max_tokens over its cap); both are reported, the chat ends normally
    finished = _chat_piped(platform_server, "first question\nsecond question\n", "--max-tokens", "100000")
    assert finished.returncode == 0, finished.stderr
    errors = [line for line in finished.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all("max_tokens" in line for line in errors), finished.stderr
    assert "Traceback" not in finished.stderr


def test_an_unknown_adapter_ends_the_chat_at_start(platform_server: BackgroundServer) -> None:
    finished = _chat_piped(platform_server, "never sent\n", "--adapter", "no-such-adapter:prod")
    assert finished.returncode == 2, (finished.returncode, finished.stderr)
    assert "no-such-adapter" in finished.stderr and "not found" in finished.stderr, finished.stderr
    assert "Traceback" not in finished.stderr and "> " not in finished.stdout
