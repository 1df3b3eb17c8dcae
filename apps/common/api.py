"""REST plumbing shared by every app: the error shape of PROTOCOL §8."""

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions, parsers, status
from rest_framework.response import Response

from apps.common.errors import OUTAGES, NatterError, TooLarge, Unavailable

logger = logging.getLogger("natter.api")

_DRF_CODES = {
    exceptions.NotAuthenticated: ("unauthorized", 401),
    exceptions.AuthenticationFailed: ("unauthorized", 401),
    exceptions.PermissionDenied: ("forbidden", 403),
    exceptions.NotFound: ("not_found", 404),
    exceptions.MethodNotAllowed: ("method_not_allowed", 405),
    exceptions.NotAcceptable: ("not_acceptable", 406),
    exceptions.UnsupportedMediaType: ("unsupported_media_type", 415),
    exceptions.ParseError: ("bad_request", 400),
    exceptions.ValidationError: ("bad_request", 400),
    exceptions.Throttled: ("rate_limited", 429),
}


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, but a body nested too deeply is a 400, not a 500.

    Python's json module raises RecursionError (not a ValueError) on a few
    thousand nested brackets: a 100 KiB body would otherwise crash the request.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise exceptions.ParseError(
                "JSON parse error - the body is nested too deeply."
            ) from exc


def error_response(error: NatterError) -> Response:
    headers = {}
    if "retry_after" in error.extra:
        headers["Retry-After"] = str(error.extra["retry_after"])
    response = Response({"error": error.as_dict()}, status=error.status, headers=headers)
    if error.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def exception_handler(exc, context):
    """Render every error as `{"error": {"code", "message", ...}}`."""
    if isinstance(exc, NatterError):
        return error_response(exc)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if isinstance(exc, OUTAGES):
        logger.warning("backing service unavailable: %s", exc)
        return error_response(Unavailable())
    if isinstance(exc, RequestDataTooBig):
        return error_response(
            TooLarge(
                "The request body is too large.", max_bytes=settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            )
        )
    if isinstance(exc, exceptions.APIException):
        code, status_code = next(
            (v for k, v in _DRF_CODES.items() if isinstance(exc, k)),
            ("error", exc.status_code),
        )
        body = {"code": code, "message": _message(exc)}
        if isinstance(exc, exceptions.ValidationError):
            body["fields"] = exc.detail
        response = Response({"error": body}, status=status_code or status.HTTP_400_BAD_REQUEST)
        if isinstance(exc, exceptions.Throttled) and exc.wait:
            response["Retry-After"] = str(int(exc.wait) + 1)
        if status_code == 401:
            response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response
    return None


def _message(exc: exceptions.APIException) -> str:
    if isinstance(exc, exceptions.ValidationError):
        return "Some fields are not valid."
    detail = exc.detail
    return str(detail) if not isinstance(detail, dict | list) else "The request is not valid."
