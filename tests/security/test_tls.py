"""TLS and mutual TLS with a real server process, a real runner process and the real
CLI, on certificates made for the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.certificates import Certificates, make_certificates
from tests.support.eventually import eventually_sync
from tests.support.processes import dispatcher_server, run_cli, runner_process

PLATFORM = "tls/test"


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "certs")


def _tls_settings(certs: Certificates, *, mutual: bool) -> dict[str, str]:
    settings = {"tls__cert_file": str(certs.server_cert), "tls__key_file": str(certs.server_key)}
    if mutual:
        settings["tls__client_ca_file"] = str(certs.ca)
    return settings


def _job_succeeds(address: str, *tls: str) -> None:
    submitted = run_cli(address, "submit", *tls, "--platform", PLATFORM, "--json", "--", "true")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]

    def succeeded() -> bool:
        shown = run_cli(address, "jobs", "show", *tls, str(job_id), "--json")
        assert shown.returncode == 0, shown.stderr
        return bool(json.loads(shown.stdout)["state"] == "JOB_STATE_SUCCEEDED")

    eventually_sync(succeeded, timeout=30)


@pytest.mark.e2e
def test_tls_with_a_runner_and_the_cli(tmp_path: Path, certs: Certificates) -> None:
    tls = ("--ca-file", str(certs.ca))
    with dispatcher_server(
        f"sqlite:///{tmp_path / 'd.db'}", tmp_path, settings=_tls_settings(certs, mutual=False)
    ) as server:
        assert "TLS" in server.banner
        plain = run_cli(server.address, "server", "info")
        assert plain.returncode == 3, plain.stderr  # a plaintext client cannot talk to it
        with runner_process(server.address, "tls-1", tmp_path, "--platform", PLATFORM, *tls):
            _job_succeeds(server.address, *tls)


@pytest.mark.e2e
def test_mutual_tls_needs_a_client_certificate_from_the_ca(
    tmp_path: Path, certs: Certificates
) -> None:
    tls = ("--ca-file", str(certs.ca))
    mine = (*tls, "--cert-file", str(certs.client_cert), "--key-file", str(certs.client_key))
    stranger = (
        *tls,
        "--cert-file",
        str(certs.stranger_cert),
        "--key-file",
        str(certs.stranger_key),
    )
    with dispatcher_server(
        f"sqlite:///{tmp_path / 'd.db'}", tmp_path, settings=_tls_settings(certs, mutual=True)
    ) as server:
        assert "mutual TLS" in server.banner
        for refused in (tls, stranger):
            result = run_cli(server.address, "server", "info", *refused)
            assert result.returncode == 3, result.stderr
        with runner_process(server.address, "mtls-1", tmp_path, "--platform", PLATFORM, *mine):
            _job_succeeds(server.address, *mine)
