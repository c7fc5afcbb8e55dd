"""Workflow files: a YAML DAG of tasks with retry policies and bounded review loops, run through the broker."""
