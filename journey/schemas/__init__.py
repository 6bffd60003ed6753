"""JSON Schemas of the records on journey's topics (``topics/`` links here): shipped
with the package, so ``journey topics export`` writes them beside the catalogue."""

from pathlib import Path

DIR = Path(__file__).parent
