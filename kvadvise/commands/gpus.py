"""`kvadvise gpus`: the GPU catalog `--gpu` names, and the local cards where NVML answers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from kvadvise.commands._common import JsonOption, Outcome, OutputOption, execute


def gpus(json_mode: bool = JsonOption, output: Optional[Path] = OutputOption) -> None:
    """List the GPU catalog (total memory CUDA reports on each card, and its source) and local cards."""

    def body() -> Outcome:
        from kvadvise.gpus import CATALOG
        from kvadvise.report.gpus import gpus_document, local_devices, render

        local, warnings = local_devices()
        document = gpus_document(CATALOG, local, warnings)
        return Outcome(document=document, render=lambda console: render(document, console))

    execute(body, json_mode=json_mode, output=output)


def register(app: typer.Typer) -> None:
    app.command("gpus")(gpus)
