"""Middleware of the demo shop."""

from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse

RETRY_AFTER = 5


class DatabaseUnavailableMiddleware:
    """A page whose database cannot be reached (restarting, failing over) is a short 503
    with ``Retry-After``, not a 500: the shopper's browser, a load balancer or a crawler
    may try again, and nothing about the server is shown."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """Answer 503 for database outages; leave every other error to Django."""
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        response = HttpResponse("The shop is briefly unavailable. Please try again in a "
                                "few seconds.", status=503, content_type="text/plain")
        response["Retry-After"] = str(RETRY_AFTER)
        return response
