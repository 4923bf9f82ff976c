"""The public Python client and CLI of mmsearch; they speak HTTP only and import nothing of the service.

    from mmsearch import Client
    Client("http://127.0.0.1:8000").search("photos", text="a cat", k=3)
"""
from mmsearch.client import ApiError, Client, NotFound

__all__ = ["ApiError", "Client", "NotFound"]
