"""/api/v1 routes: orgs (see API.md)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
