"""Rendering: rich tables, JSON documents, markdown. The only place bytes become "GiB"."""
