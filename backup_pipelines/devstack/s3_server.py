"""An S3 endpoint on 127.0.0.1: moto's server, spoken to over real HTTP by boto3.

With `tls=True` Debian's stunnel also terminates TLS (a throwaway self-signed certificate) in
front of it on `tls_port`, for clients that speak HTTPS only, such as pgBackRest (moto's own
`--ssl` mode fails on uploads).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from backup_pipelines.devstack.ports import LOOPBACK, free_port, wait_for_port

ACCESS_KEY = "local-demo-key"
SECRET_KEY = "local-demo-secret"  # a throwaway credential of a loopback-only fake


class S3Server:
    def __init__(self, bucket: str = "agent-backups", tls: bool = False) -> None:
        self.port = free_port()
        self.bucket = bucket
        self.tls_port: int | None = free_port() if tls else None
        self._process: subprocess.Popen | None = None
        self._stunnel: subprocess.Popen | None = None
        self._tls_dir: Path | None = None

    @property
    def tls_endpoint(self) -> str:
        if self.tls_port is None:
            raise RuntimeError("this S3Server was started without tls=True")
        return f"https://{LOOPBACK}:{self.tls_port}"

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }

    def start(self) -> S3Server:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **self.env},
        )
        try:
            wait_for_port(self.port, timeout=30)
            self.client().create_bucket(Bucket=self.bucket)
            if self.tls_port is not None:
                self._start_stunnel()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_stunnel(self) -> None:
        stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
        if stunnel is None:
            raise RuntimeError("stunnel is not installed (apt-get install stunnel4)")
        self._tls_dir = Path(tempfile.mkdtemp(prefix="backup-pipelines-stunnel-"))
        cert, key = self._tls_dir / "cert.pem", self._tls_dir / "key.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                f"/CN={LOOPBACK}",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        conf = self._tls_dir / "stunnel.conf"
        conf.write_text(
            "foreground = yes\npid =\ndebug = 3\n"
            f"[s3]\naccept = {LOOPBACK}:{self.tls_port}\nconnect = {LOOPBACK}:{self.port}\n"
            f"cert = {cert}\nkey = {key}\n"
        )
        self._stunnel = subprocess.Popen(
            [stunnel, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.tls_port, timeout=30)

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def stop(self) -> None:
        for process in (self._stunnel, self._process):
            if process:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
                if process.poll() is None:
                    process.kill()
                    process.wait()
        self._stunnel = self._process = None
        if self._tls_dir:
            shutil.rmtree(self._tls_dir, ignore_errors=True)
            self._tls_dir = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
