"""Stopping the servers tests start (vcf-cds serve, nginx, the sandbox's static server)."""

from __future__ import annotations

import subprocess


def stop(proc: subprocess.Popen, grace_seconds: float = 20) -> None:
    """SIGTERM ``proc`` (a graceful shutdown for gunicorn and nginx), then SIGKILL if it is
    still running after ``grace_seconds``; always reaped, so no zombie outlives the test."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
