"""Thin typer commands: parse options, call one library function, hand the result to report/.

Modules here import only typer and kvadvise's light modules at top level; torch and transformers are
imported inside the command bodies so that `kvadvise --help` stays fast.
"""
