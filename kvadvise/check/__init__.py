"""`kvadvise check`: read a vLLM start-up log, recompute its budget, find its accounting faults.

parser.py streams a log file line by line into frozen records (what each rank and engine printed);
findings.py recomputes the budgets with kvadvise's own arithmetic (plan/advice.py, plan/kv.py) and
lists the faults. Both are pure: no torch, no device, no rendering (that is report/check.py).
"""
