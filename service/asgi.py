"""ASGI entry point for uvicorn (``service.asgi:create``, factory mode): one app per worker."""

from __future__ import annotations

from fastapi import FastAPI

from service.app import create_app


def create() -> FastAPI:
    return create_app()
