"""The public Python client and CLI of mmsearch; they speak HTTP only and import nothing of the service.

    from mmsearch import Client
    Client("http://127.0.0.1:8000").search("photos", text="a cat", k=3)
"""
from mmsearch.client import Client
from mmsearch.errors import (ApiError, Conflict, ConnectionFailed, Internal, InvalidItem, InvalidRequest,
                             MethodNotAllowed, NotFound, PayloadTooLarge, RateLimited, Unauthorized,
                             Unavailable, UnsupportedMediaType)
from mmsearch.progress import ProgressBar
from mmsearch.uploads import FileItem

__all__ = ["ApiError", "Client", "Conflict", "ConnectionFailed", "FileItem", "Internal", "InvalidItem",
           "InvalidRequest", "MethodNotAllowed", "NotFound", "PayloadTooLarge", "ProgressBar", "RateLimited",
           "Unauthorized", "Unavailable", "UnsupportedMediaType"]
