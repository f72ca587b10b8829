"""`kvadvise estimate`: the profile report from a config alone, with no GPU and no real memory.

weights.py (safetensors headers or a meta-device build, quantization-aware, per TP rank / PP stage),
activation.py (the runner's dummy run under FakeTensorMode), graphs.py (CUDA-graph pool and non-torch
defaults), engine.py (assembles the BudgetReport with plan/advice.advise, the same code as profile).
"""
