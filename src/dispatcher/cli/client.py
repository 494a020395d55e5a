"""The CLI's connection to a dispatcher's Admin service, and what a failed call becomes.

``admin_command`` is the one place that adds the connection options (``--server``,
``--token``, ``--ca-file``, ``--cert-file``, ``--key-file``) to a command, opens the
channel, and turns a failed call into a one-line message and an exit code (the table
in ``EXIT_CODES``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import grpc
from google.protobuf.message import Message

from dispatcher.v1 import admin_pb2, admin_pb2_grpc, types_pb2

DEFAULT_SERVER = "127.0.0.1:50051"
# One call never waits longer than this; a dispatcher that does not answer is unreachable.
CALL_TIMEOUT_SECONDS = 30.0

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2  # click's own
EXIT_UNREACHABLE = 3
EXIT_JOB_NOT_SUCCEEDED = 4

EXIT_CODES_HELP = f"""\b
Exit codes:
  {EXIT_OK}  done
  {EXIT_REFUSED}  the dispatcher refused the request (not found, invalid, ...)
  {EXIT_USAGE}  bad command line
  {EXIT_UNREACHABLE}  cannot reach the dispatcher (unavailable, timed out)
  {EXIT_JOB_NOT_SUCCEEDED}  submit --wait: the job did not succeed (or --timeout passed)
"""

_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class CliFailure(click.ClickException):
    """A one-line ``error: ...`` on stderr and the subclass's exit code; never a traceback."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class Refused(CliFailure):
    exit_code = EXIT_REFUSED


class Unreachable(CliFailure):
    exit_code = EXIT_UNREACHABLE


class JobNotSucceeded(CliFailure):
    exit_code = EXIT_JOB_NOT_SUCCEEDED


@dataclass(frozen=True)
class Endpoint:
    """Where the dispatcher is and how to talk to it."""

    server: str
    token: str | None = None
    ca_file: Path | None = None
    # Mutual TLS: this client's certificate chain and key (PEM).
    cert_file: Path | None = None
    key_file: Path | None = None

    def channel(self) -> grpc.Channel:
        if self.ca_file is None:
            if self.cert_file is not None:
                raise click.UsageError("--cert-file needs --ca-file (TLS)")
            return grpc.insecure_channel(self.server)
        if (self.cert_file is None) != (self.key_file is None):
            raise click.UsageError("--cert-file and --key-file go together")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )
        return grpc.secure_channel(self.server, credentials)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


class Admin:
    """Typed calls to the Admin service over one channel."""

    def __init__(self, channel: grpc.Channel, endpoint: Endpoint) -> None:
        self.channel = channel
        self._stub = admin_pb2_grpc.AdminStub(channel)
        self._kwargs: dict[str, Any] = {
            "metadata": endpoint.metadata(),
            "timeout": CALL_TIMEOUT_SECONDS,
        }

    def submit_job(self, spec: types_pb2.JobSpec) -> admin_pb2.SubmitJobResponse:
        return self._stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=spec), **self._kwargs)

    def get_job(self, job_id: int) -> types_pb2.Job:
        return self._stub.GetJob(admin_pb2.GetJobRequest(id=job_id), **self._kwargs).job

    def list_jobs(self, request: admin_pb2.ListJobsRequest) -> admin_pb2.ListJobsResponse:
        return self._stub.ListJobs(request, **self._kwargs)

    def cancel_job(self, job_id: int, reason: str) -> types_pb2.Job:
        request = admin_pb2.CancelJobRequest(id=job_id, reason=reason)
        return self._stub.CancelJob(request, **self._kwargs).job

    def list_runners(self) -> list[types_pb2.Runner]:
        return list(self._stub.ListRunners(admin_pb2.ListRunnersRequest(), **self._kwargs).runners)

    def drain_runner(self, name: str, reason: str) -> types_pb2.Runner:
        request = admin_pb2.DrainRunnerRequest(name=name, reason=reason)
        return self._stub.DrainRunner(request, **self._kwargs).runner

    def undrain_runner(self, name: str) -> types_pb2.Runner:
        request = admin_pb2.UndrainRunnerRequest(name=name)
        return self._stub.UndrainRunner(request, **self._kwargs).runner

    def server_info(self) -> admin_pb2.GetServerInfoResponse:
        return self._stub.GetServerInfo(admin_pb2.GetServerInfoRequest(), **self._kwargs)

    def call_on(self, method: Callable[..., Any], request: Message) -> Any:
        """A unary call of another service's stub on this channel, with the token and
        deadline of every call (the Distributor service takes admin tokens for its
        read-only calls)."""
        return method(request, **self._kwargs)

    def call(self, rpc: str, request: Message) -> Any:
        """Any unary Admin RPC by name: ``admin.call("ListFlavors", request)``."""
        return getattr(self._stub, rpc)(request, **self._kwargs)

    def watch_pressures(self) -> Iterator[admin_pb2.WatchPressuresResponse]:
        """The pressure stream; no deadline, it lasts until the caller stops."""
        return iter(
            self._stub.WatchPressures(
                admin_pb2.WatchPressuresRequest(), metadata=self._kwargs["metadata"]
            )
        )

    def watch_jobs(
        self, request: admin_pb2.WatchJobsRequest
    ) -> Iterator[admin_pb2.WatchJobsResponse]:
        """The job change stream; no deadline, it lasts until the caller stops."""
        return iter(self._stub.WatchJobs(request, metadata=self._kwargs["metadata"]))

    def create_token(
        self, name: str, role: admin_pb2.TokenRole.ValueType
    ) -> admin_pb2.CreateTokenResponse:
        request = admin_pb2.CreateTokenRequest(name=name, role=role)
        return self._stub.CreateToken(request, **self._kwargs)

    def list_tokens(self) -> list[admin_pb2.Token]:
        return list(self._stub.ListTokens(admin_pb2.ListTokensRequest(), **self._kwargs).tokens)

    def delete_token(self, name: str) -> admin_pb2.Token:
        request = admin_pb2.DeleteTokenRequest(name=name)
        return self._stub.DeleteToken(request, **self._kwargs).token


def describe_rpc_error(error: grpc.RpcError, server: str) -> CliFailure:
    """``NOT_FOUND: job 9 does not exist`` with the exit code its status code means."""
    if not isinstance(error, grpc.Call):
        return Refused(f"UNKNOWN: {error}")
    code = error.code()
    details = error.details() or "(no details)"
    if code in _UNREACHABLE:
        return Unreachable(f"{code.name}: cannot reach {server}: {details}")
    return Refused(f"{code.name}: {details}")


@contextmanager
def connect(endpoint: Endpoint) -> Iterator[Admin]:
    """An ``Admin`` on a fresh channel; a failed call inside becomes a ``CliFailure``."""
    try:
        with endpoint.channel() as channel:
            yield Admin(channel, endpoint)
    except grpc.RpcError as error:
        raise describe_rpc_error(error, endpoint.server) from None


def endpoint_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the connection options to a click command and pass it ``endpoint=Endpoint``."""

    @click.option(
        "--server",
        envvar="DISPATCHER_SERVER",
        default=DEFAULT_SERVER,
        show_default=True,
        metavar="HOST:PORT",
        help="The dispatcher's gRPC address [env DISPATCHER_SERVER].",
    )
    @click.option(
        "--token",
        envvar="DISPATCHER_TOKEN",
        metavar="TOKEN",
        help="Admin token, sent as 'authorization: Bearer TOKEN' [env DISPATCHER_TOKEN].",
    )
    @click.option(
        "--ca-file",
        envvar="DISPATCHER_CA_FILE",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Use TLS, trusting this CA bundle (PEM) [env DISPATCHER_CA_FILE].",
    )
    @click.option(
        "--cert-file",
        envvar="DISPATCHER_CERT_FILE",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Mutual TLS: this client's certificate (PEM) [env DISPATCHER_CERT_FILE].",
    )
    @click.option(
        "--key-file",
        envvar="DISPATCHER_KEY_FILE",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Mutual TLS: the certificate's private key (PEM) [env DISPATCHER_KEY_FILE].",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any,
        server: str,
        token: str | None,
        ca_file: Path | None,
        cert_file: Path | None,
        key_file: Path | None,
        **kwargs: Any,
    ) -> Any:
        endpoint = Endpoint(server, token, ca_file, cert_file, key_file)
        return func(*args, endpoint=endpoint, **kwargs)

    return wrapper


def admin_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the connection options to a click command and pass it ``admin=Admin``."""

    @endpoint_options
    @functools.wraps(func)
    def wrapper(*args: Any, endpoint: Endpoint, **kwargs: Any) -> Any:
        with connect(endpoint) as admin:
            return func(*args, admin=admin, **kwargs)

    return wrapper
