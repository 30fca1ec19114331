"""A throwaway PostgreSQL server for tests: its own data folder and a free loopback port.

``start_postgres()`` runs ``initdb`` (trust authentication, no fsync) in a fresh temporary
folder and starts the server; ``.stop()`` / ``.start()`` stop and restart it on the same
folder and port (for outage tests) and ``.destroy()`` stops it and deletes the folder.
PostgreSQL refuses to run as root, so when the tests run as root every server command runs
as the ``postgres`` user (``runuser``) and the folder belongs to that user (mode 0700).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = "install it with scripts/install-system-deps.sh (Debian package: postgresql)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_bin_dir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: $CORRAL_PG_BIN, PATH, or the newest
    /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH)."""
    candidates: list[Path] = []
    if os.environ.get("CORRAL_PG_BIN"):
        candidates.append(Path(os.environ["CORRAL_PG_BIN"]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(p) for p in versions), key=lambda p: _version_key(p.parent.name), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise RuntimeError(f"PostgreSQL server binaries (initdb, pg_ctl) not found; {INSTALL_HINT}")


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


@dataclass
class Postgres:
    bin_dir: Path
    data_dir: Path
    port: int
    run_as: list[str] = field(default_factory=list)  # command prefix: ["runuser", "-u", "postgres", "--"] as root

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        result = self._pg_ctl("-o", options, "-l", str(self.log_path), "-w", "-t", "30", "start")
        if result.returncode != 0:
            raise RuntimeError(
                f"PostgreSQL failed to start on port {self.port}:\n{result.stdout}{result.stderr}\n{self.log()[-3000:]}"
            )

    def stop(self) -> None:
        """Fast shutdown: open connections are closed, new ones refused."""
        if (self.data_dir / "postmaster.pid").exists():
            self._pg_ctl("-m", "fast", "-w", "-t", "30", "stop")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [*self.run_as, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args]
        return subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )


def start_postgres() -> Postgres:
    """initdb in a new temporary folder and start the server on a free loopback port."""
    bin_dir = find_bin_dir()
    data_dir = Path(tempfile.mkdtemp(prefix="corral-pg-"))  # mode 0700; short path for the socket
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(data_dir, ignore_errors=True)
            raise RuntimeError(f"running as root but there is no 'postgres' user; {INSTALL_HINT}") from None
        runuser = shutil.which("runuser")
        if runuser is None:
            shutil.rmtree(data_dir, ignore_errors=True)
            raise RuntimeError("running as root needs `runuser` (util-linux) to start PostgreSQL as 'postgres'")
        run_as = [runuser, "-u", "postgres", "--"]
        os.chown(data_dir, user.pw_uid, user.pw_gid)
    os.chmod(data_dir, 0o700)
    init = subprocess.run(
        [*run_as, str(bin_dir / "initdb"), "-D", str(data_dir), "-A", "trust", "-U", "postgres", "-N", "-E", "UTF8"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    if init.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise RuntimeError(f"initdb failed:\n{init.stdout}{init.stderr}")
    server = Postgres(bin_dir=bin_dir, data_dir=data_dir, port=free_port(), run_as=run_as)
    for attempt in range(3):  # the free port may be taken between choosing and binding it
        try:
            server.start()
            return server
        except RuntimeError:
            if attempt == 2:
                server.destroy()
                raise
            server.port = free_port()
    raise AssertionError("unreachable")
