"""/api/v1 routes: aliases (see API.md)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
