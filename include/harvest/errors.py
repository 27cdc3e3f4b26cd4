"""Why a download failed, as exceptions that know their :class:`~include.harvest.models.Status`.

The hierarchy (each class maps to one status; the message is meant for a person to act on)::

    DownloadError                       base of everything the engine raises for one URL
    ├── RetryableError                  transient: worth another attempt after a back-off
    │   ├── Timeout                     connect, read or total deadline exceeded   -> timeout
    │   ├── ConnectionFailed            refused, reset, closed early               -> connection_error
    │   └── RetryableHttpStatus         408, 429, 500, 502, 503, 504               -> http_error
    └── PermanentError                  another attempt would get the same answer
        ├── Rejected                    the URL itself is unusable                 -> rejected
        ├── Blocked                     address guard, robots.txt or X-Robots-Tag  -> blocked
        ├── Unresolvable                the host name does not resolve             -> connection_error
        ├── HostUnreachable             its robots.txt got no answer at all        -> connection_error
        ├── TlsFailed                   TLS handshake or certificate check failed  -> connection_error
        ├── HttpError                   any other non-success HTTP status          -> http_error
        ├── TooLarge                    body over the size cap                     -> too_large
        ├── TooManyRedirects            redirect chain over the cap, or a loop     -> too_many_redirects
        └── InvalidContent              not an acceptable image                    -> invalid_content

Low-level errors (urllib3, socket, Pillow) are re-raised as one of these ``from`` the original.

One error is about the deployment, not a URL, and stops a run before anything is downloaded::

    StorageUnavailable                  a storage, work or list URI cannot be used: missing bucket,
                                        refused credentials, unreachable endpoint, unwritable folder
"""

from __future__ import annotations

from typing import ClassVar

from include.harvest.models import Status

__all__ = [
    "Blocked",
    "ConnectionFailed",
    "DownloadError",
    "HostUnreachable",
    "HttpError",
    "InvalidContent",
    "PermanentError",
    "Rejected",
    "RetryableError",
    "RetryableHttpStatus",
    "StorageUnavailable",
    "Timeout",
    "TooLarge",
    "TlsFailed",
    "TooManyRedirects",
    "Unresolvable",
    "describe_bytes",
]


class DownloadError(Exception):
    """A URL could not be turned into a stored object; ``status`` says how it will be recorded."""

    status: ClassVar[Status] = Status.CONNECTION_ERROR
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status

    def __str__(self) -> str:
        return self.message


class RetryableError(DownloadError):
    """A transient failure: the same request may well succeed after a back-off."""

    retryable = True


class PermanentError(DownloadError):
    """A definitive failure: retrying would only repeat it."""


class Timeout(RetryableError):
    """The server was too slow to connect, to answer, or to finish the body."""

    status = Status.TIMEOUT


class ConnectionFailed(RetryableError):
    """The connection was refused, reset or closed before the response was complete."""

    status = Status.CONNECTION_ERROR


class RetryableHttpStatus(RetryableError):
    """The server answered 408, 429 or 5xx-transient; ``retry_after`` is its Retry-After in seconds."""

    status = Status.HTTP_ERROR

    def __init__(self, message: str, *, http_status: int, retry_after: float | None = None) -> None:
        super().__init__(message, http_status=http_status)
        self.retry_after = retry_after


class Rejected(PermanentError):
    """The URL is unusable as written (scheme, host, port, control characters)."""

    status = Status.REJECTED


class Blocked(PermanentError):
    """Refused on purpose: a private/loopback address (SSRF guard), robots.txt or X-Robots-Tag."""

    status = Status.BLOCKED


class Unresolvable(PermanentError):
    """The host name has no address in DNS."""

    status = Status.CONNECTION_ERROR


class HostUnreachable(PermanentError):
    """The host did not answer when its robots.txt was asked for: nothing is fetched from it until
    it does (RFC 9309), and retrying at once would meet the same cached answer."""

    status = Status.CONNECTION_ERROR


class TlsFailed(PermanentError):
    """The TLS handshake failed or the certificate does not match the host."""

    status = Status.CONNECTION_ERROR


class HttpError(PermanentError):
    """The server answered with a status that another attempt would not change (404, 403, 410...)."""

    status = Status.HTTP_ERROR


class TooLarge(PermanentError):
    """The body is over the size cap, as declared by Content-Length or as counted while streaming."""

    status = Status.TOO_LARGE


class TooManyRedirects(PermanentError):
    """The redirect chain is longer than the cap, or comes back to a URL already visited."""

    status = Status.TOO_MANY_REDIRECTS


class InvalidContent(PermanentError):
    """The body is not an acceptable image: wrong type, truncated, or too many pixels."""

    status = Status.INVALID_CONTENT


class StorageUnavailable(Exception):
    """A storage, work or list URI cannot be used; the message names the URI, its setting and the fix.

    ``retryable`` is true when waiting may help (an unreachable endpoint); a missing bucket or
    refused credentials stay so until a person acts, so the task fails without retries.
    """

    def __init__(self, message: str, *, uri: str, setting: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.uri = uri
        self.setting = setting
        self.retryable = retryable


def describe_bytes(size: int) -> str:
    """``20971520`` -> ``"20 MiB"``: caps in messages read the way people set them."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"
