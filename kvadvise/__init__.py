"""kvadvise: GPU-memory profiler and KV-cache budget advisor for vLLM.

Importing the package imports nothing heavy: torch and transformers load only inside the commands
that need them, so `kvadvise --help` stays fast.
"""

__version__ = "0.1.0"
