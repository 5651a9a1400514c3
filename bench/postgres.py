"""A throwaway PostgreSQL cluster for the benchmark's production configuration.

``initdb`` into a fresh temporary directory, ``pg_ctl start`` listening on 127.0.0.1 only
(trust authentication: loopback, a cluster that lives for one benchmark run), and
``pg_ctl stop`` plus removal of the directory at the end. The binaries are found as
``.ci/start-postgres`` finds them (the newest ``/usr/lib/postgresql/<version>/bin``), else on
PATH. As root, the cluster runs as the ``postgres`` user (``initdb`` refuses root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEBIAN_ROOT = Path("/usr/lib/postgresql")
USER = "vcf_cds_bench"
DATABASE = "postgres"


@dataclass(frozen=True)
class Cluster:
    """A running cluster: its SQLAlchemy URL (psycopg driver) and data directory."""

    url: str
    data_dir: Path

    def postmaster_pid(self) -> int:
        """Pid of the postmaster (first line of ``postmaster.pid``): the parent of every backend."""
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])


def binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    versions = sorted((p for p in DEBIAN_ROOT.glob("*/bin") if (p / "initdb").exists()),
                      key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()])
    if versions:
        return versions[-1]
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    return None


def _as_owner(argv: list[str]) -> list[str]:
    """``argv`` run as the ``postgres`` user when this process is root."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextmanager
def throwaway_cluster(port: int, bindir: Path, log: Path) -> Iterator[Cluster]:
    """Start a cluster on ``127.0.0.1:port`` in a new temporary directory; stop and remove
    it on exit. Server output goes to ``log``. Raises ``subprocess.CalledProcessError`` when
    initdb or pg_ctl fails, ``SystemExit`` when the server does not accept connections."""
    data_dir = Path(tempfile.mkdtemp(prefix="vcf-cds-bench-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(data_dir, owner.pw_uid, owner.pw_gid)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT}
    started = False
    try:
        subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data_dir), "-U", USER, "--auth=trust",
                                  "--no-sync", "-E", "UTF8", "--locale=C"]), check=True, **quiet)
        # The socket in the data directory, not /var/run/postgresql: nothing outside is touched.
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={data_dir}"
        with open(log, "ab") as out:
            subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data_dir), "-o", options, "-w", "-t", "60",
                                      "-l", str(data_dir / "server.log"), "start"]), check=True, stdout=out,
                           stderr=subprocess.STDOUT)
        started = True
        cluster = Cluster(f"postgresql+psycopg://{USER}@127.0.0.1:{port}/{DATABASE}", data_dir)
        _wait_ready(bindir, port)
        yield cluster
    finally:
        if started:
            subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"]),
                           check=False, **quiet)
            server_log = data_dir / "server.log"
            if server_log.exists():
                with open(log, "ab") as out:
                    out.write(server_log.read_bytes())
        shutil.rmtree(data_dir, ignore_errors=True)


def _wait_ready(bindir: Path, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready = subprocess.run([str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)], check=False)
        if ready.returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"PostgreSQL on 127.0.0.1:{port} did not accept connections within 30 s")
