"""
Errors a request can end with.  The API maps each class to one HTTP status in
one place (L{fangs.orchestrator.api}); the message is shown to the client in
the error envelope, so it must be precise and must not leak internals.
"""


class FangsError(Exception):
    code = "internal"
    status = 500

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class BadRequest(FangsError):
    code = "bad_request"
    status = 400


class Unauthorized(FangsError):
    code = "unauthorized"
    status = 401


class Forbidden(FangsError):
    code = "forbidden"
    status = 403


class NotFoundError(FangsError):
    code = "not_found"
    status = 404


class ConflictError(FangsError):
    code = "conflict"
    status = 409


class Gone(FangsError):
    code = "gone"
    status = 410


class PayloadTooLarge(FangsError):
    code = "payload_too_large"
    status = 413


class Unavailable(FangsError):
    code = "unavailable"
    status = 503
