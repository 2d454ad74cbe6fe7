"""/api/v1 routes: api_keys (see API.md)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
