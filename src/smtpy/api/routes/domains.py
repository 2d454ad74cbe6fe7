"""/api/v1 routes: domains (see API.md)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
