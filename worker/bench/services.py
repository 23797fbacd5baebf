"""Private instances of the test services, each started, stopped and restarted on its own.

:class:`PrivateService` runs one service of ``scripts/services.sh`` (Kafka, Redis or S3) in a run
directory of its own on loopback ports of its own, so a soak or a fault test can restart it without
touching the shared services (or the other private ones). What it stores survives a restart: Kafka's
log directory stays, s3proxy keeps its objects (``INVAD_S3_KEEP_DATA=1``), and Redis is shut down
with ``SHUTDOWN SAVE`` and reloads its snapshot, as a Redis with persistence would.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

from .workers import REPO

SERVICES_SH = REPO / "scripts" / "services.sh"
# services.sh's pid file per service, and what its command line contains
_PID_FILE = {"kafka": "kafka.pid", "redis": "redis.pid", "s3": "s3proxy.pid"}
# services.sh starts what is not given by these variables: set the two others to keep it to one service
_GIVEN = {"kafka": "INVAD_TEST_KAFKA", "redis": "INVAD_TEST_REDIS_URL", "s3": "INVAD_TEST_S3_ENDPOINT"}
S3_KEYS = ("invad-test-access", "invad-test-secret-key")  # services.sh's defaults for its local S3


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago.

    All the sockets stay bound until every port is chosen: ports taken one at a time and released
    at once can come back equal (the kernel may hand out a just-released port again), and a server
    given one port for two listeners refuses to start.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


class PrivateService:
    """One of ``kafka``, ``redis``, ``s3`` in ``run_dir`` on free loopback ports.

    Raises (from start/stop):
        RuntimeError: services.sh failed (its last output lines are in the message), or is missing.
    """

    def __init__(self, name: str, run_dir: str | os.PathLike):
        if name not in _PID_FILE:
            raise ValueError(f"unknown service {name!r}; choose one of {', '.join(_PID_FILE)}")
        if not SERVICES_SH.is_file():
            raise RuntimeError(f"{SERVICES_SH} is missing: private services need a checkout of the repository")
        port, controller_port = free_ports(2)
        self.name, self.run_dir, self.port = name, Path(run_dir), port
        self.env = {k: v for k, v in os.environ.items() if k not in _GIVEN.values()}
        self.env.update({var: "unused://127.0.0.1:9" for other, var in _GIVEN.items() if other != name})
        self.env.update(INVAD_RUN_DIR=str(self.run_dir), INVAD_S3_KEEP_DATA="1")
        port_var = {"kafka": "INVAD_KAFKA_PORT", "redis": "INVAD_REDIS_PORT", "s3": "INVAD_S3_PORT"}[name]
        self.env[port_var] = str(self.port)
        if name == "kafka":
            self.env["INVAD_KAFKA_CONTROLLER_PORT"] = str(controller_port)
        if name == "s3":
            self.env.update(INVAD_TEST_S3_ACCESS_KEY=S3_KEYS[0], INVAD_TEST_S3_SECRET_KEY=S3_KEYS[1])

    @property
    def address(self) -> str:
        """``host:port`` (Kafka), ``redis://host:port/0`` (Redis) or ``http://host:port`` (S3)."""
        host = f"127.0.0.1:{self.port}"
        return {"kafka": host, "redis": f"redis://{host}/0", "s3": f"http://{host}"}[self.name]

    def pid(self) -> int | None:
        """The service's process id while services.sh's pid file names one."""
        try:
            return int((self.run_dir / _PID_FILE[self.name]).read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        """Start it and wait until it serves (services.sh's readiness checks)."""
        self._services("start")

    def stop(self) -> None:
        """Stop it (Redis: ``SHUTDOWN SAVE`` first, so its data comes back with the next start)."""
        pid = self.pid()
        if self.name == "redis" and pid is not None:
            subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "save"], capture_output=True, timeout=60)
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        self._services("stop")

    def _services(self, command: str) -> None:
        done = subprocess.run(["bash", str(SERVICES_SH), command], env=self.env, capture_output=True, text=True,
                              timeout=240)
        if done.returncode != 0:
            raise RuntimeError(f"services.sh {command} ({self.name}, run dir {self.run_dir}) failed:\n"
                               f"{done.stderr[-3000:]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
