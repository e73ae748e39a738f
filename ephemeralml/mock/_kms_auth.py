"""SigV4 request authentication for the mock KMS: which principal signed a request.

:func:`verify_sigv4` recomputes a request's signature with botocore's own SigV4 code,
over the bytes received, with the credentials of the principal whose access key id the
request names, and answers that principal or the error AWS sends (the module docstring
of :mod:`ephemeralml.mock._kms` lists them).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

from ._kms_principals import MockCredentials, MockPrincipal
from ._kms_requests import _KmsError

__all__ = ["MAX_CLOCK_SKEW_S", "SERVICE", "verify_sigv4"]


#: The service name SigV4 credential scopes must carry.
SERVICE = "kms"

#: How far a request's ``X-Amz-Date`` may be from the server's clock, in seconds: AWS's
#: SigV4 window (5 minutes; "Signature expired: ... (... - 5 min.)" beyond it).
MAX_CLOCK_SKEW_S = 300


_SIGV4_ALGORITHM = "AWS4-HMAC-SHA256"
_SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"
_SIGV4_TERMINATOR = "aws4_request"
_BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service "
    "documentation for details."
)
_BAD_TOKEN = "The security token included in the request is invalid."  # noqa: S105


def _incomplete(message: str) -> _KmsError:
    return _KmsError("IncompleteSignatureException", message)


def _invalid_signature(message: str = _BAD_SIGNATURE) -> _KmsError:
    return _KmsError("InvalidSignatureException", message)


def _authorization_fields(value: str) -> tuple[list[str], list[str], str]:
    """(credential scope parts, signed header names, signature) of a SigV4 header."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != _SIGV4_ALGORITHM:
        raise _incomplete(f"Authorization header requires the '{_SIGV4_ALGORITHM}' algorithm.")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, text = part.strip().partition("=")
        if sep:
            fields[name] = text
    missing = [n for n in ("Credential", "Signature", "SignedHeaders") if not fields.get(n)]
    if missing:
        raise _incomplete(
            " ".join(f"Authorization header requires '{n}' parameter." for n in missing)
        )
    scope = fields["Credential"].split("/")
    if len(scope) != 5:
        raise _incomplete(
            "Credential must have exactly 5 slash-delimited elements, "
            f"e.g. keyid/date/region/service/term, got '{fields['Credential']}'"
        )
    signed = fields["SignedHeaders"].split(";")
    return scope, signed, fields["Signature"]


def verify_sigv4(
    method: str,
    path: str,
    headers: Any,
    body: bytes,
    *,
    credentials: Mapping[str, MockCredentials],
    region: str,
    now: datetime,
) -> MockPrincipal:
    """The principal whose credentials signed this request, or the :class:`_KmsError` AWS sends.

    ``headers`` is the received header block (``http.client.HTTPMessage``: several
    values per name kept). Checks, in order: an ``Authorization`` header (else
    ``MissingAuthenticationTokenException``); its SigV4 form, ``X-Amz-Date`` present
    and, with ``Host``, signed (``IncompleteSignatureException``); a known access key
    id and its exact session token (``UnrecognizedClientException``); the scope's
    service, region, terminator and date, the date within :data:`MAX_CLOCK_SKEW_S` of
    ``now``, and the signature itself (``InvalidSignatureException``). Not checked:
    that ``Host`` names this server (a forwarder in between changes it, and SigV4
    covers the value the client signed).
    """
    authorization = headers.get("Authorization")
    if not authorization:
        raise _KmsError("MissingAuthenticationTokenException", "Missing Authentication Token")
    (key_id, date, scope_region, service, terminator), signed_names, signature = (
        _authorization_fields(authorization)
    )
    signed_names = [n.lower() for n in signed_names]
    amz_date = headers.get("X-Amz-Date")
    if not amz_date:
        raise _incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
        )
    try:
        stamped = datetime.strptime(amz_date, _SIGV4_TIMESTAMP).replace(tzinfo=UTC)
    except ValueError as e:
        raise _incomplete(f"X-Amz-Date '{amz_date}' is not an ISO-8601 basic timestamp.") from e
    for required, shown in (("host", "'Host' or ':authority'"), ("x-amz-date", "'X-Amz-Date'")):
        if required not in signed_names:
            raise _incomplete(f"{shown} must be a 'SignedHeader' in the AWS Authorization.")
    caller = next((c for c in credentials.values() if c.access_key_id == key_id), None)
    token = headers.get("X-Amz-Security-Token") or ""
    if caller is None or not hmac.compare_digest(
        token.encode("utf-8"), caller.session_token.encode("utf-8")
    ):
        raise _KmsError("UnrecognizedClientException", _BAD_TOKEN)
    if service != SERVICE:
        raise _invalid_signature(f"Credential should be scoped to correct service: '{SERVICE}'. ")
    if scope_region != region:
        raise _invalid_signature(
            f"Credential should be scoped to a valid region, not '{scope_region}'. "
        )
    if terminator != _SIGV4_TERMINATOR:
        raise _invalid_signature(
            f"Credential should be scoped with a valid terminator: '{_SIGV4_TERMINATOR}', "
            f"not '{terminator}'. "
        )
    if date != amz_date[:8]:
        raise _invalid_signature(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{date}' != '{amz_date[:8]}', from 'X-Amz-Date'."
        )
    skew = timedelta(seconds=MAX_CLOCK_SKEW_S)
    minutes = MAX_CLOCK_SKEW_S // 60
    now = now.astimezone(UTC)
    if stamped < now - skew:
        raise _invalid_signature(
            f"Signature expired: {amz_date} is now earlier than "
            f"{(now - skew).strftime(_SIGV4_TIMESTAMP)} "
            f"({now.strftime(_SIGV4_TIMESTAMP)} - {minutes} min.)"
        )
    if stamped > now + skew:
        raise _invalid_signature(
            f"Signature not yet current: {amz_date} is still later than "
            f"{(now + skew).strftime(_SIGV4_TIMESTAMP)} "
            f"({now.strftime(_SIGV4_TIMESTAMP)} + {minutes} min.)"
        )
    signed = HTTPHeaders()
    for name in signed_names:
        values = headers.get_all(name)
        if not values:
            raise _invalid_signature()
        for value in values:
            signed[name] = value
    # The canonical request over the bytes received: method, path and query, the signed
    # headers, and the SHA-256 of the body as it arrived (never a client-declared hash).
    request = AWSRequest(method=method, url=f"http://signed.invalid{path}", data=body)
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(
        Credentials(caller.access_key_id, caller.secret_access_key, caller.session_token),
        SERVICE,
        scope_region,
    )
    # botocore's SigV4, canonicalizing exactly the headers the client says it signed.
    signer.headers_to_sign = lambda _request: signed
    string_to_sign = signer.string_to_sign(request, signer.canonical_request(request))
    expected = signer.signature(string_to_sign, request)
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "replace")):
        raise _invalid_signature()
    return caller.principal
