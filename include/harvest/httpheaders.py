"""Response headers parsed without the email package: what http.client builds, at under half the cost.

http.client hands every response's header block to ``email.parser``, a general MIME parser:
34-46 µs for nginx's eight headers on the reference machine (its speed drifts), the largest single
cost of the engine's HTTP path, paid with the GIL held by every fetch thread. :func:`parse_headers`
builds the same ``HTTPMessage`` in 10-20 µs, under the rules of the email parser with policy
compat32 (what http.client uses): lines split at CR, LF or CRLF; folded lines kept as sent; a
first line that is a continuation, a line with no name and an mbox ``From`` line dropped as
defects; the block ends at the first line that is not a header, and what follows is kept as
unparsed payload (urllib3 then logs it). ``tests/include/test_httpheaders.py`` checks it against
the stdlib on clean, hostile and random header blocks.

:class:`HTTPResponse` is http.client's response with this parser in place; everything else (status
line, 1xx responses, Content-Length, chunked, keep-alive) stays the stdlib's own code.
"""

from __future__ import annotations

import email.errors
import functools
import http.client
import re
import types
from collections.abc import Callable
from typing import IO, Any, TypeVar, cast

__all__ = ["HTTPResponse", "parse_headers"]

F = TypeVar("F", bound=Callable[..., Any])

_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)?")  # one line and its end, as email.feedparser splits


def parse_headers(fp: IO[bytes]) -> http.client.HTTPMessage:
    """Read a header block from ``fp`` (limits of http.client apply) into an ``HTTPMessage``."""
    message = http.client.HTTPMessage()
    lines = _lines(http.client._read_headers(fp))  # type: ignore[attr-defined]
    # The headers end at the first line that is not one (normally the blank line); what follows
    # is unparsed payload, as with the email parser.
    end = next((number for number, line in enumerate(lines) if not _is_header_line(line)), len(lines))
    headers, rest = lines[:end], lines[end:]
    if rest and rest[0] in ("\r\n", "\r", "\n"):
        del rest[0]
    elif rest:
        message.defects.append(email.errors.MissingHeaderBodySeparatorDefect())
    name: str | None = None
    value = ""
    for number, line in enumerate(headers):
        if line[0] in " \t":  # a folded line continues the previous header, kept as sent
            if name is None:
                message.defects.append(email.errors.FirstHeaderLineIsContinuationDefect(line))
            else:
                value += line
            continue
        if name is not None:
            message.set_raw(name, value.rstrip("\r\n"))
            name = None
        colon = line.find(":")
        if line.startswith("From "):  # an mbox envelope line to the email parser: not a header
            if number and number == len(headers) - 1:
                rest.insert(0, line)
            elif number:
                message.defects.append(email.errors.MisplacedEnvelopeHeaderDefect(line))
        elif colon == 0:
            message.defects.append(email.errors.InvalidHeaderDefect("Missing header name."))
        else:
            name, value = line[:colon], line[colon + 1 :].lstrip(" \t")
    if name is not None:
        message.set_raw(name, value.rstrip("\r\n"))
    if rest:
        message.set_payload("".join(rest))
    return message


def _is_header_line(line: str) -> bool:
    """A header, a folded continuation or an envelope line (email.feedparser's headerRE)."""
    if line[0] in " \t" or line.startswith("From "):
        return True
    colon = line.find(":")
    return colon == 0 or (colon > 0 and _is_field_name(line[:colon]))


def _is_field_name(text: str) -> bool:
    """Printable ASCII without space (colon excluded by the caller), as the email parser wants."""
    return text.isascii() and text.isprintable() and " " not in text


def _lines(raw_lines: list[bytes]) -> list[str]:
    """Header lines as text, split where the email parser splits them: at CR, LF or CRLF.

    readline() split the block at LF only; a CR anywhere but right before an LF (rare, and
    hostile) starts a new line too.
    """
    block = b"".join(raw_lines)
    if b"\r" in block.replace(b"\r\n", b""):
        return _LINE.findall(block.decode("iso-8859-1"))[:-1]  # the pattern also matches "" at the end
    return [line.decode("iso-8859-1") for line in raw_lines if line]


def _with_header_parser(function: F, parser: Callable[..., http.client.HTTPMessage]) -> F:
    """``function``, a function of http.client, run with ``parser`` as its ``parse_headers``."""
    replaced = types.FunctionType(
        function.__code__,
        {**function.__globals__, "parse_headers": parser},
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    return cast(F, functools.update_wrapper(replaced, function))


class HTTPResponse(http.client.HTTPResponse):
    """http.client's response, reading its headers with :func:`parse_headers`."""

    # The stdlib's own begin(), run with parse_headers above in place of http.client's: nothing of
    # the response logic is copied, so it keeps every fix the stdlib gets.
    begin = _with_header_parser(http.client.HTTPResponse.begin, parse_headers)
