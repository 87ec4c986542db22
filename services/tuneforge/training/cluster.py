"""The Ray cluster jobs run on: Ray's Job Submission API, and the local head of the embedded default.

With `training.ray_address` (or an http(s) `RAY_ADDRESS`) the service talks to that cluster's
dashboard, e.g. the KubeRay head service; a cluster with Ray's token auth gets the token from
`RAY_AUTH_TOKEN` (or the file `RAY_AUTH_TOKEN_PATH` names), Ray's own variables, as a bearer header.
Without one it starts a Ray head of its own on this
machine (`ray start --head --block` in its own process group), records it in `<home>/ray/head.json`
and reuses it after its own restart, so jobs running on it are picked up again rather than lost.
That head listens on loopback only and runs with Ray's token auth: a random token in
`<home>/ray/auth_token` (0600) that the head, the Job API client and the jobs' processes read.
Ray's session directory (its `--temp-dir`, under the system temp directory) goes when the head is
stopped, once none of its processes is left; a head left running keeps it.
Every call here blocks (HTTP or process management): the service runs them in threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tuneforge.common.logging import get_logger

log = get_logger(__name__)

#: Ray job states after which a submission never changes again.
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
#: Seconds a stopped head's processes get to be gone before its session directory is kept instead.
SESSION_EXIT_S = 10.0


@dataclass(frozen=True)
class SubmissionStatus:
    """What Ray says about one submission."""

    status: str  # PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED
    message: str

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def _is_missing(exc: Exception) -> bool:
    text = str(exc)
    return "404" in text or "does not exist" in text


def ray_auth_headers(token_path: Path | None = None) -> dict[str, str]:
    """`Authorization: Bearer <token>` for a Ray cluster with token auth; else none.

    The token comes from `token_path` when given (the local head's own token), else from Ray's own
    variables. Sent explicitly, so the Job API gets the token whatever `RAY_AUTH_MODE` this process has.
    """
    token = "" if token_path is not None else os.environ.get("RAY_AUTH_TOKEN", "").strip()
    path = str(token_path) if token_path is not None else os.environ.get("RAY_AUTH_TOKEN_PATH", "")
    if not token and path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise RuntimeError(f"RAY_AUTH_TOKEN_PATH names {path}, which cannot be read: {exc}") from exc
    return {"Authorization": f"Bearer {token}"} if token else {}


class RayJobs:
    """One Ray cluster's Job Submission API."""

    def __init__(self, address: str, token_path: Path | None = None) -> None:
        """`token_path`: the cluster's token file (the local head's); without it Ray's own variables."""
        from ray.job_submission import JobSubmissionClient

        self.address = address
        self.client = JobSubmissionClient(address, headers=ray_auth_headers(token_path) or None)

    def submit(self, submission_id: str, entrypoint: str, env: dict[str, str]) -> None:
        """Submits `entrypoint` under `submission_id`; a submission Ray already has is left as it is."""
        if self.status(submission_id) is not None:
            return  # submitted before the service could record it (it died in between)
        self.client.submit_job(
            entrypoint=entrypoint, submission_id=submission_id, runtime_env={"env_vars": env} if env else None
        )

    def status(self, submission_id: str) -> SubmissionStatus | None:
        """The submission's status and Ray's message, or None when the cluster does not know it."""
        try:
            info = self.client.get_job_info(submission_id)
        except RuntimeError as exc:
            if _is_missing(exc):
                return None
            raise
        return SubmissionStatus(str(getattr(info.status, "value", info.status)), info.message or "")

    def stop(self, submission_id: str) -> None:
        try:
            self.client.stop_job(submission_id)
        except RuntimeError as exc:
            if not _is_missing(exc):
                raise

    def logs(self, submission_id: str) -> str:
        try:
            return self.client.get_job_logs(submission_id)
        except RuntimeError as exc:
            if _is_missing(exc):
                return ""
            raise

    def submission_ids(self, prefix: str = "") -> list[str]:
        return sorted(
            job.submission_id for job in self.client.list_jobs() if (job.submission_id or "").startswith(prefix)
        )


def _ephemeral_low() -> int:
    """Lowest port the kernel hands out for port-0 binds (32768 on Linux by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_taken: set[int] = set()


def _free_port() -> int:
    """A free port below the ephemeral range.

    Ray binds the ports it is given some seconds later; a port from the ephemeral range could be
    handed to any port-0 bind on the machine meanwhile (a lost race left a head whose dashboard
    agent never listened, so no job could be submitted). Ports below that range only collide with
    other explicit choices, and those are random.
    """
    low, high = 20000, max(20001, _ephemeral_low())
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(low, high)
        if port in _taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))  # noqa: S104 - a probe, closed at once: free on every interface
            except OSError:
                continue
        _taken.add(port)
        return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str, headers: dict[str, str]) -> bool:
    request = urllib.request.Request(f"{url}/api/version", headers=headers)  # noqa: S310 - our own http URL
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 - our own http URL
            return response.status == 200
    except OSError:
        return False


def _private_directory(path: Path) -> Path:
    """`path` as a directory only this user can enter (0700), refused when someone else owns it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if path.is_symlink() or info.st_uid != os.getuid():
        raise RuntimeError(f"{path} is not a directory of this user (uid {os.getuid()}); remove it or pick another")
    os.chmod(path, 0o700)
    return path


def ensure_token(path: Path) -> Path:
    """A random 256-bit Ray auth token in `path` (created 0600 if missing, an existing one kept and made 0600)."""
    _private_directory(path.parent)
    if not path.exists():
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
        temp.replace(path)
    os.chmod(path, 0o600)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _session_processes(group: int, temp_dir: Path) -> bool:
    """Whether a process of the head's process group, or one naming its temp dir, still runs.

    Zombies run nothing and do not count (an orphan's may wait for an init that never reaps it).
    Without /proc only the process group is asked, and a zombie in it counts.
    """
    try:
        os.killpg(group, 0)
        in_group = True
    except ProcessLookupError:
        in_group = False
    except PermissionError:
        in_group = True
    proc = Path("/proc")
    if not proc.is_dir():
        return in_group
    marker = os.fsencode(f"{temp_dir}/")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # `pid (comm) state ppid pgrp ...`: comm may hold spaces and parentheses, what follows the last `)` not
            fields = (entry / "stat").read_bytes().rpartition(b")")[2].split()
            if fields[0] in (b"Z", b"X"):
                continue
            if int(fields[2]) == group or marker in (entry / "cmdline").read_bytes():
                return True
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return False


class LocalRayHead:
    """A Ray head on this machine that the service starts, finds again after a restart, and stops."""

    def __init__(self, directory: Path, num_cpus: int = 2) -> None:
        self.directory = Path(directory)
        self.num_cpus = num_cpus
        self.state_file = self.directory / "head.json"
        #: Ray's token for this head; the head, the Job API client and the jobs read it.
        self.token_path = self.directory / "auth_token"
        digest = hashlib.sha256(str(self.directory.resolve()).encode()).hexdigest()[:10]
        # Ray makes its temp dir 0777 (every user may write sockets and logs there): it lives inside a
        # 0700 directory of ours, so nobody else reaches it (short paths: Ray's socket names)
        self.private_dir = Path(tempfile.gettempdir()) / f"tuneforge-ray-{digest}"
        self.temp_dir = self.private_dir / "ray"

    def auth_headers(self) -> dict[str, str]:
        """The bearer header this head's Job API wants (none before it has a token)."""
        return ray_auth_headers(self.token_path) if self.token_path.exists() else {}

    def job_env(self) -> dict[str, str]:
        """What a job's processes (and drivers on this machine) need to talk to this head.

        The token file, not the token; and Ray's single-machine mode, without which a driver takes the
        machine's external address for its own node and waits forever for a raylet there (see `ensure`).
        """
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path.resolve()),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }

    def _state(self) -> dict[str, object] | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def running_address(self) -> str | None:
        """The dashboard URL of the head this directory records, if it still answers."""
        state = self._state()
        if state and _alive(int(state["pid"])) and _answers(str(state["dashboard_url"]), self.auth_headers()):
            return str(state["dashboard_url"])
        return None

    def gcs_address(self) -> str:
        """The head's GCS address (`host:port`), for `ray.init(address=...)` in this machine's drivers."""
        return (self.temp_dir / "ray_current_cluster").read_text().strip()

    def ensure(self, timeout_s: float = 180.0) -> str:
        """The running head's dashboard URL, starting one when there is none."""
        address = self.running_address()
        if address is not None and _answers(address, {}):
            # a head from before token auth (or started by hand without it): anyone on the machine could
            # submit jobs to it; its jobs are resubmitted from their checkpoints on the new head
            log.warning("local_ray_without_token_auth_restarting", dashboard=address)
            self.stop()
            address = None
        if address is not None:
            log.info("local_ray_reused", dashboard=address)
            return address
        _private_directory(self.directory)
        ensure_token(self.token_path)
        _private_directory(self.private_dir)
        dashboard_port = _free_port()
        url = f"http://127.0.0.1:{dashboard_port}"
        ray = Path(sys.executable).with_name("ray")
        command = [
            str(ray) if ray.exists() else "ray",
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            f"--num-cpus={self.num_cpus}",
            "--node-ip-address=127.0.0.1",  # with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 below: kept on loopback
            f"--port={_free_port()}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={_free_port()}",  # cannot be turned off here; on loopback like the rest
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            # a temp dir of its own: Ray points jobs at the cluster recorded in `<temp>/ray_current_cluster`,
            # which another `ray start` on this machine would otherwise overwrite (short: socket paths)
            f"--temp-dir={self.temp_dir}",
        ]
        env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(self.job_env())
        # Ray turns a loopback --node-ip-address into the machine's external address and binds its
        # GCS, raylet, agents and Ray Client server there (or on every interface); with clusters
        # "disabled" (Ray's single-machine mode, its default on macOS) the node's address stays
        # 127.0.0.1 and every one of them listens on loopback only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
        # in `job_env`)
        with (self.directory / "head.log").open("ab") as output:
            # its own session: the head outlives a crash of the service, whose restart finds it again
            process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        # ready once the dashboard answers and `ray start` has recorded the GCS address (written last)
        while not (_answers(url, self.auth_headers()) and (self.temp_dir / "ray_current_cluster").exists()):
            if process.poll() is not None:
                raise RuntimeError(
                    f"the local Ray head exited with status {process.returncode}; see {self.directory / 'head.log'}"
                )
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the local Ray head did not answer within {timeout_s:.0f} s")
            time.sleep(0.5)
        temp = self.state_file.with_suffix(".tmp")
        temp.write_text(json.dumps({"pid": process.pid, "dashboard_url": url}))
        temp.replace(self.state_file)
        log.info("local_ray_started", dashboard=url, pid=process.pid, num_cpus=self.num_cpus)
        return url

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stops the recorded head and everything it started (its process group), then removes Ray's temp dir."""
        state = self._state()
        if not state:
            return
        pid = int(state["pid"])
        # `ray start --block` stops the processes it started when it gets SIGTERM; whatever is left of
        # its process group after that is killed
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        self.state_file.unlink(missing_ok=True)
        log.info("local_ray_stopped", pid=pid)
        self._remove_session_dir(pid)

    def _remove_session_dir(self, group: int) -> None:
        """Removes Ray's temp dir (and our private directory around it) once no process of the head is left.

        A directory some process of the head still uses is kept: removing it under a running head
        would take its sockets and logs away.
        """
        deadline = time.monotonic() + SESSION_EXIT_S
        while _session_processes(group, self.temp_dir):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(group, os.WNOHANG)  # the head, when it is our child, is a zombie until reaped
            if time.monotonic() > deadline:
                log.warning("local_ray_session_dir_kept", directory=str(self.private_dir), reason="Ray processes left")
                return
            time.sleep(0.1)
        try:
            info = self.private_dir.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            log.warning("local_ray_session_dir_kept", directory=str(self.private_dir), reason="not ours")
            return
        try:
            shutil.rmtree(self.private_dir)
        except OSError as exc:
            log.warning("local_ray_session_dir_kept", directory=str(self.private_dir), reason=repr(exc))
            return
        log.info("local_ray_session_dir_removed", directory=str(self.private_dir))
