"""/api/v1 routes: auth (see API.md)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
