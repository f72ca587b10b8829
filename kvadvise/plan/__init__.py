"""Pure planning arithmetic: KV pages, budgets, capacity, pipeline splits. Never imports torch."""
