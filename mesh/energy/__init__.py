"""Energy: the node's ledger (what each answer cost in joules), device and link profiles, power
sensors, budgets and the governor that holds a node to its budget (``docs/energy.md``)."""
