"""ASGI entry point for uvicorn (``inferwatch.asgi:create``, factory mode): one app per worker."""

from __future__ import annotations

from fastapi import FastAPI

from inferwatch.app import create_app


def create() -> FastAPI:
    return create_app()
