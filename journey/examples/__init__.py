"""Example files shipped with the package: ``journeys.example.toml`` (the journeys
``journey demo`` runs with; ``deploy/journeys.example.toml`` links to it)."""

from pathlib import Path

JOURNEYS = Path(__file__).with_name("journeys.example.toml")
